// CUDA kernel of the pooled-bias mean: mean over H, W of channels-last x, per sample (the C x C product runs
// in cuBLAS through ATen in the binding). One block per (sample, 32 channels); a fixed-order reduction.
#include "deltaconv/cuda_launchers.h"
#include "device_utils.cuh"

namespace deltaconv::cuda {
namespace {

constexpr int kLanesC = 32;
constexpr int kLanesP = 8;

template <typename T, typename acc_t>
__global__ void spatial_mean_kernel(View4 x, acc_t* __restrict__ mean) {
  __shared__ acc_t partial[kLanesP][kLanesC];
  const int64_t b = blockIdx.x, c = int64_t(blockIdx.y) * kLanesC + threadIdx.x, n = x.H * x.W;
  acc_t s = 0;
  if (c < x.C) {
    for (int64_t p = threadIdx.y; p < n; p += kLanesP) s += to_acc<acc_t>(*at<T>(x, b, p / x.W, p % x.W, c));
  }
  partial[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < x.C) {
    acc_t total = 0;
    for (int j = 0; j < kLanesP; ++j) total += partial[j][threadIdx.x];
    mean[b * x.C + c] = total / static_cast<acc_t>(n);
  }
}

}  // namespace

cudaError_t spatial_mean(DType dt, const View4& x, void* mean, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned int>(x.B), static_cast<unsigned int>((x.C + kLanesC - 1) / kLanesC));
  const dim3 block(kLanesC, kLanesP);
  dispatch_dtype(dt, [&](auto t) {
    using T = decltype(t);
    using acc_t = typename AccOf<T>::type;
    spatial_mean_kernel<T, acc_t><<<grid, block, 0, stream>>>(x, static_cast<acc_t*>(mean));
  });
  return cudaGetLastError();
}

}  // namespace deltaconv::cuda
