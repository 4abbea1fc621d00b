// CUDA kernels of the fused pyramid stage (DESIGN §2), channels-last, one thread per output element with
// grid-stride loops and 64-bit indexing. All arithmetic is in the compute dtype (fp32; fp64 for fp64 tensors);
// stores round once. Every output element and every weight-gradient entry is produced by exactly one thread
// or one block in a fixed order: no atomics, results are deterministic.
#include "deltaconv/cuda_launchers.h"
#include "deltaconv/geometry.h"
#include "device_utils.cuh"

namespace deltaconv::cuda {
namespace {

// The two conv outputs d_a = d[..., c] and d_g = d[..., Ch + c] at pooled-res pixel (b, y, x).
template <typename Tin, typename acc_t>
__device__ __forceinline__ void conv_pair(const View4& src, const acc_t* __restrict__ w, int64_t K, int64_t b,
                                          int64_t y, int64_t x, int64_t c, int64_t Ch, acc_t& da, acc_t& dg) {
  const int64_t half = K / 2, Ci = src.C;
  da = acc_t(0);
  dg = acc_t(0);
  for (int64_t ky = 0; ky < K; ++ky) {
    const int64_t iy = y + ky - half;
    if (iy < 0 || iy >= src.H) continue;
    for (int64_t kx = 0; kx < K; ++kx) {
      const int64_t ix = x + kx - half;
      if (ix < 0 || ix >= src.W) continue;
      const Tin* p = at<Tin>(src, b, iy, ix, c);
      const acc_t* wk = w + (ky * K + kx) * Ci + c;
      da += to_acc<acc_t>(p[0]) * wk[0];
      dg += to_acc<acc_t>(p[Ch]) * wk[Ch];
    }
  }
}

template <typename Tin, typename acc_t>
__global__ void pool_kernel(View4 src, int64_t h, int64_t w, acc_t* __restrict__ P) {
  const int64_t Ci = src.C, n = src.B * h * w * Ci;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % Ci, ox = (i / Ci) % w, oy = (i / (Ci * w)) % h, b = i / (Ci * w * h);
    const int64_t y0 = window_start(oy, src.H, h), y1 = window_end(oy, src.H, h);
    const int64_t x0 = window_start(ox, src.W, w), x1 = window_end(ox, src.W, w);
    acc_t s = 0;
    for (int64_t y = y0; y < y1; ++y)
      for (int64_t x = x0; x < x1; ++x) s += to_acc<acc_t>(*at<Tin>(src, b, y, x, c));
    P[i] = s / static_cast<acc_t>((y1 - y0) * (x1 - x0));
  }
}

template <typename Tin, typename Tout, typename acc_t>
__global__ void conv_gate_kernel(View4 src, const acc_t* __restrict__ w, int64_t K, View4 dst, int64_t off,
                                 bool sigmoid_gate, acc_t gs) {
  const int64_t Ch = src.C / 2, n = src.B * src.H * src.W * Ch;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % Ch, x = (i / Ch) % src.W, y = (i / (Ch * src.W)) % src.H, b = i / (Ch * src.W * src.H);
    acc_t da, dg;
    conv_pair<Tin, acc_t>(src, w, K, b, y, x, c, Ch, da, dg);
    const acc_t z = sigmoid_gate ? da * sigmoid(dg) : da * dg * gs;
    *at<Tout>(dst, b, y, x, off + c) = from_acc<Tout>(z);
  }
}

template <typename T, typename acc_t>
__global__ void upsample_kernel(const acc_t* __restrict__ Z, int64_t h, int64_t w, int64_t Ch, View4 out,
                                int64_t off) {
  const int64_t n = out.B * out.H * out.W * Ch;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % Ch, x = (i / Ch) % out.W, y = (i / (Ch * out.W)) % out.H, b = i / (Ch * out.W * out.H);
    const BilinearTap ty = bilinear_tap(y, h, out.H), tx = bilinear_tap(x, w, out.W);
    const acc_t ly = static_cast<acc_t>(ty.lam), lx = static_cast<acc_t>(tx.lam);
    const acc_t* zb = Z + b * h * w * Ch + c;
    // Rows first, then columns, like the reference.
    const acc_t r0 = zb[(ty.i0 * w + tx.i0) * Ch] * (acc_t(1) - ly) + zb[(ty.i1 * w + tx.i0) * Ch] * ly;
    const acc_t r1 = zb[(ty.i0 * w + tx.i1) * Ch] * (acc_t(1) - ly) + zb[(ty.i1 * w + tx.i1) * Ch] * ly;
    *at<T>(out, b, y, x, off + c) = from_acc<T>(r0 * (acc_t(1) - lx) + r1 * lx);
  }
}

// Weight of output index `o` (full res, size `out`) on source index `s` (size `in`) in the bilinear resize.
template <typename acc_t>
__device__ __forceinline__ acc_t tap_weight(int64_t o, int64_t s, int64_t in, int64_t out) {
  const BilinearTap t = bilinear_tap(o, in, out);
  const acc_t l = static_cast<acc_t>(t.lam);
  return (t.i0 == s ? acc_t(1) - l : acc_t(0)) + (t.i1 == s ? l : acc_t(0));
}

template <typename T, typename acc_t>
__global__ void upsample_backward_kernel(View4 g, int64_t off, int64_t Ch, int64_t h, int64_t w,
                                         acc_t* __restrict__ GZ) {
  const int64_t H = g.H, W = g.W, n = g.B * h * w * Ch;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % Ch, ox = (i / Ch) % w, oy = (i / (Ch * w)) % h, b = i / (Ch * w * h);
    // Full-res rows whose taps can reach oy lie in [(oy - 0.5) H/h - 1.5, (oy + 1.5) H/h + 0.5].
    const int64_t ylo = imax(0, static_cast<int64_t>((oy - 0.5) * H / h) - 2);
    const int64_t yhi = imin(H - 1, static_cast<int64_t>((oy + 1.5) * H / h) + 2);
    const int64_t xlo = imax(0, static_cast<int64_t>((ox - 0.5) * W / w) - 2);
    const int64_t xhi = imin(W - 1, static_cast<int64_t>((ox + 1.5) * W / w) + 2);
    acc_t s = 0;
    for (int64_t y = ylo; y <= yhi; ++y) {
      const acc_t wy = tap_weight<acc_t>(y, oy, h, H);
      if (wy == acc_t(0)) continue;
      for (int64_t x = xlo; x <= xhi; ++x) {
        const acc_t wx = tap_weight<acc_t>(x, ox, w, W);
        if (wx == acc_t(0)) continue;
        s += to_acc<acc_t>(*at<T>(g, b, y, x, off + c)) * wx * wy;
      }
    }
    GZ[i] = s;
  }
}

template <typename Tin, typename Tg, typename acc_t>
__global__ void gate_backward_kernel(View4 src, const acc_t* __restrict__ w, int64_t K, View4 gz, int64_t gz_off,
                                     acc_t* __restrict__ GD, bool sigmoid_gate, acc_t gs) {
  const int64_t Ch = src.C / 2, n = src.B * src.H * src.W * Ch;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % Ch, x = (i / Ch) % src.W, y = (i / (Ch * src.W)) % src.H, b = i / (Ch * src.W * src.H);
    acc_t da, dg;
    conv_pair<Tin, acc_t>(src, w, K, b, y, x, c, Ch, da, dg);
    const acc_t go = to_acc<acc_t>(*at<Tg>(gz, b, y, x, gz_off + c));
    acc_t ga, gg;
    if (sigmoid_gate) {
      const acc_t s = sigmoid(dg);
      ga = go * s;
      gg = go * da * s * (acc_t(1) - s);
    } else {
      ga = go * dg * gs;
      gg = go * da * gs;
    }
    acc_t* out = GD + ((b * src.H + y) * src.W + x) * src.C;
    out[c] = ga;
    out[Ch + c] = gg;
  }
}

template <typename acc_t>
__global__ void conv_transpose_add_kernel(const acc_t* __restrict__ GD, int64_t B, int64_t h, int64_t w, int64_t Ci,
                                          const acc_t* __restrict__ wt, int64_t K, acc_t* __restrict__ dst) {
  const int64_t half = K / 2, n = B * h * w * Ci;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % Ci, x = (i / Ci) % w, y = (i / (Ci * w)) % h, b = i / (Ci * w * h);
    acc_t s = 0;
    for (int64_t ky = 0; ky < K; ++ky) {
      const int64_t oy = y + half - ky;
      if (oy < 0 || oy >= h) continue;
      for (int64_t kx = 0; kx < K; ++kx) {
        const int64_t ox = x + half - kx;
        if (ox < 0 || ox >= w) continue;
        s += GD[((b * h + oy) * w + ox) * Ci + c] * wt[(ky * K + kx) * Ci + c];
      }
    }
    dst[i] += s;
  }
}

template <typename acc_t>
__global__ void pool_backward_add_kernel(const acc_t* __restrict__ gP, int64_t B, int64_t h, int64_t w, int64_t Ci,
                                         int64_t H, int64_t W, acc_t* __restrict__ GU) {
  const int64_t n = B * H * W * Ci;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % Ci, x = (i / Ci) % W, y = (i / (Ci * W)) % H, b = i / (Ci * W * H);
    acc_t s = 0;
    // The windows containing y are among oy in [y*h/H, (y+1)*h/H].
    for (int64_t oy = (y * h) / H; oy <= imin(h - 1, ((y + 1) * h) / H); ++oy) {
      const int64_t y0 = window_start(oy, H, h), y1 = window_end(oy, H, h);
      if (y < y0 || y >= y1) continue;
      for (int64_t ox = (x * w) / W; ox <= imin(w - 1, ((x + 1) * w) / W); ++ox) {
        const int64_t x0 = window_start(ox, W, w), x1 = window_end(ox, W, w);
        if (x < x0 || x >= x1) continue;
        s += gP[((b * h + oy) * w + ox) * Ci + c] / static_cast<acc_t>((y1 - y0) * (x1 - x0));
      }
    }
    GU[i] += s;
  }
}

constexpr int kLanesC = 32;  // channels per block (threadIdx.x)
constexpr int kLanesP = 8;   // position lanes per block (threadIdx.y)

// One block per (tap, 32-channel group): each thread sums a fixed strided subset of positions, then the
// block adds the 8 lanes in a fixed order.
template <typename Tin, typename acc_t>
__global__ void weight_grad_kernel(View4 src, const acc_t* __restrict__ GD, int64_t K, acc_t* __restrict__ gw) {
  __shared__ acc_t partial[kLanesP][kLanesC];
  const int64_t tap = blockIdx.x, ky = tap / K, kx = tap % K, half = K / 2;
  const int64_t c = int64_t(blockIdx.y) * kLanesC + threadIdx.x, Ci = src.C;
  const int64_t n = src.B * src.H * src.W;
  acc_t s = 0;
  if (c < Ci) {
    for (int64_t p = threadIdx.y; p < n; p += kLanesP) {
      const int64_t x = p % src.W, y = (p / src.W) % src.H, b = p / (src.W * src.H);
      const int64_t iy = y + ky - half, ix = x + kx - half;
      if (iy < 0 || iy >= src.H || ix < 0 || ix >= src.W) continue;
      s += GD[p * Ci + c] * to_acc<acc_t>(*at<Tin>(src, b, iy, ix, c));
    }
  }
  partial[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < Ci) {
    acc_t total = 0;
    for (int j = 0; j < kLanesP; ++j) total += partial[j][threadIdx.x];
    gw[tap * Ci + c] = total;
  }
}

template <typename Tin>
using Acc = typename AccOf<Tin>::type;

}  // namespace

cudaError_t pool(DType dt, const View4& src, int64_t h, int64_t w, void* P, cudaStream_t stream) {
  dispatch_dtype(dt, [&](auto t) {
    using T = decltype(t);
    using acc_t = Acc<T>;
    pool_kernel<T, acc_t><<<blocks_for(src.B * h * w * src.C), kThreads, 0, stream>>>(src, h, w,
                                                                                     static_cast<acc_t*>(P));
  });
  return cudaGetLastError();
}

cudaError_t conv_gate(DType dt, const View4& src, bool src_is_acc, const void* weight, int64_t K, const View4& dst,
                      bool dst_is_acc, int64_t dst_off, bool sigmoid_gate, double gate_scale, cudaStream_t stream) {
  dispatch_dtype(dt, [&](auto t) {
    using T = decltype(t);
    using acc_t = Acc<T>;
    const auto* w = static_cast<const acc_t*>(weight);
    const auto gs = static_cast<acc_t>(gate_scale);
    const unsigned int grid = blocks_for(src.B * src.H * src.W * (src.C / 2));
    if (src_is_acc && dst_is_acc) {
      conv_gate_kernel<acc_t, acc_t, acc_t><<<grid, kThreads, 0, stream>>>(src, w, K, dst, dst_off, sigmoid_gate, gs);
    } else if (src_is_acc) {
      conv_gate_kernel<acc_t, T, acc_t><<<grid, kThreads, 0, stream>>>(src, w, K, dst, dst_off, sigmoid_gate, gs);
    } else if (dst_is_acc) {
      conv_gate_kernel<T, acc_t, acc_t><<<grid, kThreads, 0, stream>>>(src, w, K, dst, dst_off, sigmoid_gate, gs);
    } else {
      conv_gate_kernel<T, T, acc_t><<<grid, kThreads, 0, stream>>>(src, w, K, dst, dst_off, sigmoid_gate, gs);
    }
  });
  return cudaGetLastError();
}

cudaError_t upsample(DType dt, const void* Z, int64_t h, int64_t w, int64_t Ch, const View4& out, int64_t off,
                     cudaStream_t stream) {
  dispatch_dtype(dt, [&](auto t) {
    using T = decltype(t);
    using acc_t = Acc<T>;
    upsample_kernel<T, acc_t><<<blocks_for(out.B * out.H * out.W * Ch), kThreads, 0, stream>>>(
        static_cast<const acc_t*>(Z), h, w, Ch, out, off);
  });
  return cudaGetLastError();
}

cudaError_t upsample_backward(DType dt, const View4& g, int64_t off, int64_t Ch, int64_t h, int64_t w, void* GZ,
                              cudaStream_t stream) {
  dispatch_dtype(dt, [&](auto t) {
    using T = decltype(t);
    using acc_t = Acc<T>;
    upsample_backward_kernel<T, acc_t><<<blocks_for(g.B * h * w * Ch), kThreads, 0, stream>>>(
        g, off, Ch, h, w, static_cast<acc_t*>(GZ));
  });
  return cudaGetLastError();
}

cudaError_t gate_backward(DType dt, const View4& src, bool src_is_acc, const void* weight, int64_t K,
                          const View4& gz, bool gz_is_acc, int64_t gz_off, void* GD, bool sigmoid_gate,
                          double gate_scale, cudaStream_t stream) {
  dispatch_dtype(dt, [&](auto t) {
    using T = decltype(t);
    using acc_t = Acc<T>;
    const auto* w = static_cast<const acc_t*>(weight);
    auto* gd = static_cast<acc_t*>(GD);
    const auto gs = static_cast<acc_t>(gate_scale);
    const unsigned int grid = blocks_for(src.B * src.H * src.W * (src.C / 2));
    if (src_is_acc && gz_is_acc) {
      gate_backward_kernel<acc_t, acc_t, acc_t><<<grid, kThreads, 0, stream>>>(src, w, K, gz, gz_off, gd,
                                                                               sigmoid_gate, gs);
    } else if (src_is_acc) {
      gate_backward_kernel<acc_t, T, acc_t><<<grid, kThreads, 0, stream>>>(src, w, K, gz, gz_off, gd, sigmoid_gate, gs);
    } else if (gz_is_acc) {
      gate_backward_kernel<T, acc_t, acc_t><<<grid, kThreads, 0, stream>>>(src, w, K, gz, gz_off, gd, sigmoid_gate, gs);
    } else {
      gate_backward_kernel<T, T, acc_t><<<grid, kThreads, 0, stream>>>(src, w, K, gz, gz_off, gd, sigmoid_gate, gs);
    }
  });
  return cudaGetLastError();
}

cudaError_t conv_transpose_add(DType dt, const void* GD, int64_t B, int64_t h, int64_t w, int64_t Ci,
                               const void* weight, int64_t K, void* dst, cudaStream_t stream) {
  if (dt == DType::f64) {
    conv_transpose_add_kernel<double><<<blocks_for(B * h * w * Ci), kThreads, 0, stream>>>(
        static_cast<const double*>(GD), B, h, w, Ci, static_cast<const double*>(weight), K, static_cast<double*>(dst));
  } else {
    conv_transpose_add_kernel<float><<<blocks_for(B * h * w * Ci), kThreads, 0, stream>>>(
        static_cast<const float*>(GD), B, h, w, Ci, static_cast<const float*>(weight), K, static_cast<float*>(dst));
  }
  return cudaGetLastError();
}

cudaError_t pool_backward_add(DType dt, const void* gP, int64_t B, int64_t h, int64_t w, int64_t Ci, int64_t H,
                              int64_t W, void* GU, cudaStream_t stream) {
  if (dt == DType::f64) {
    pool_backward_add_kernel<double><<<blocks_for(B * H * W * Ci), kThreads, 0, stream>>>(
        static_cast<const double*>(gP), B, h, w, Ci, H, W, static_cast<double*>(GU));
  } else {
    pool_backward_add_kernel<float><<<blocks_for(B * H * W * Ci), kThreads, 0, stream>>>(
        static_cast<const float*>(gP), B, h, w, Ci, H, W, static_cast<float*>(GU));
  }
  return cudaGetLastError();
}

cudaError_t weight_grad(DType dt, const View4& src, bool src_is_acc, const void* GD, int64_t K, void* gw,
                        cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned int>(K * K), static_cast<unsigned int>((src.C + kLanesC - 1) / kLanesC));
  const dim3 block(kLanesC, kLanesP);
  dispatch_dtype(dt, [&](auto t) {
    using T = decltype(t);
    using acc_t = Acc<T>;
    if (src_is_acc) {
      weight_grad_kernel<acc_t, acc_t><<<grid, block, 0, stream>>>(src, static_cast<const acc_t*>(GD), K,
                                                                  static_cast<acc_t*>(gw));
    } else {
      weight_grad_kernel<T, acc_t><<<grid, block, 0, stream>>>(src, static_cast<const acc_t*>(GD), K,
                                                              static_cast<acc_t*>(gw));
    }
  });
  return cudaGetLastError();
}

}  // namespace deltaconv::cuda
