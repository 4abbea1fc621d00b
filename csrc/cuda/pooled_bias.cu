// CUDA kernels of the pooled-bias mean: mean over H, W of channels-last x, per sample (the C x C product runs
// in cuBLAS through ATen in the binding). The pixels of a sample are split into a fixed number of parts, one
// block per (sample, 32 channels, part), so even B = 2 fills the GPU; the parts are added in order by a second
// kernel. The split depends on the shape only: deterministic on every device.
#include "deltaconv/cuda_launchers.h"
#include "device_utils.cuh"

namespace deltaconv::cuda {
namespace {

constexpr int kLanesC = 32;
constexpr int kLanesP = 8;
constexpr int64_t kPixelsPerPart = 1024;
constexpr int64_t kMaxParts = 256;

int64_t mean_parts(const View4& x) {
  const int64_t n = x.H * x.W, parts = (n + kPixelsPerPart - 1) / kPixelsPerPart;
  return parts < kMaxParts ? parts : kMaxParts;
}

// partial[b][part][c] = sum of x[b, p, c] over the pixels p of `part`.
template <typename T, typename acc_t>
__global__ void spatial_sum_kernel(View4 x, int64_t parts, acc_t* __restrict__ partial) {
  __shared__ acc_t lanes[kLanesP][kLanesC];
  const int64_t b = blockIdx.x, c = int64_t(blockIdx.y) * kLanesC + threadIdx.x, part = blockIdx.z;
  const int64_t n = x.H * x.W, p0 = part * n / parts, p1 = (part + 1) * n / parts;
  acc_t s = 0;
  if (c < x.C) {
    const T* base = static_cast<const T*>(x.data) + b * x.sB + c;
    for (int64_t p = p0 + threadIdx.y; p < p1; p += kLanesP) {
      const int64_t y = p / x.W, xx = p - y * x.W;
      s += to_acc<acc_t>(base[y * x.sH + xx * x.sW]);
    }
  }
  lanes[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < x.C) {
    acc_t total = 0;
    for (int j = 0; j < kLanesP; ++j) total += lanes[j][threadIdx.x];
    partial[(b * parts + part) * x.C + c] = total;
  }
}

template <typename acc_t>
__global__ void spatial_mean_reduce_kernel(const acc_t* __restrict__ partial, int64_t B, int64_t C, int64_t parts,
                                           acc_t inv_n, acc_t* __restrict__ mean) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < B * C; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / C, c = i % C;
    acc_t s = 0;
    for (int64_t part = 0; part < parts; ++part) s += partial[(b * parts + part) * C + c];
    mean[i] = s * inv_n;
  }
}

}  // namespace

int64_t spatial_mean_workspace_bytes(DType dt, const View4& x) {
  return x.B * mean_parts(x) * x.C * (dt == DType::f64 ? 8 : 4);
}

cudaError_t spatial_mean(DType dt, const View4& x, void* workspace, void* mean, cudaStream_t stream) {
  const int64_t parts = mean_parts(x);
  if (x.B > 0x7fffffff || (x.C + kLanesC - 1) / kLanesC > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned int>(x.B), static_cast<unsigned int>((x.C + kLanesC - 1) / kLanesC),
                  static_cast<unsigned int>(parts));
  const dim3 block(kLanesC, kLanesP);
  cudaError_t err = cudaSuccess;
  dispatch_dtype(dt, [&](auto t) {
    using T = decltype(t);
    using acc_t = typename AccOf<T>::type;
    auto* part = static_cast<acc_t*>(workspace);
    spatial_sum_kernel<T, acc_t><<<grid, block, 0, stream>>>(x, parts, part);
    err = cudaGetLastError();
    if (err != cudaSuccess) return;
    spatial_mean_reduce_kernel<acc_t><<<blocks_for(x.B * x.C), kThreads, 0, stream>>>(
        part, x.B, x.C, parts, acc_t(1) / static_cast<acc_t>(x.H * x.W), static_cast<acc_t*>(mean));
    err = cudaGetLastError();
  });
  return err;
}

}  // namespace deltaconv::cuda
