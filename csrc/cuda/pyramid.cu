// CUDA kernels of the fused pyramid stage (docs/DESIGN.md §2), channels-last. The K x K work (conv + gate, its
// backward, the transposed conv, the weight gradient) runs on shared-memory halo tiles (conv_tile.cuh); pooling
// and the bilinear resize are one thread per output element with grid-stride loops and 64-bit indexing. All
// arithmetic is in the compute dtype (fp32; fp64 for fp64 tensors); stores round once. Every output element and
// every weight-gradient partial is produced by exactly one thread in a fixed order, and partials are added in a
// fixed order: no atomics, results are deterministic.
#include <type_traits>

#include "conv_tile.cuh"
#include "deltaconv/cuda_launchers.h"
#include "deltaconv/geometry.h"
#include "device_utils.cuh"

namespace deltaconv::cuda {
namespace {

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

// ---- tiled K x K kernels -------------------------------------------------------------------------------------

template <typename acc_t>
__device__ __forceinline__ acc_t* smem_tile() {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  return reinterpret_cast<acc_t*>(smem_raw);
}

// This thread's first output column and channel (within a half) of the CTA tile.
struct ThreadOut {
  int y, x, c;
};

template <typename acc_t>
__device__ __forceinline__ ThreadOut thread_out(const TileOrigin& t) {
  return {t.y0 + static_cast<int>(threadIdx.y), t.x0 + static_cast<int>(threadIdx.x / kCThreads) * kXW,
          t.c0 + static_cast<int>(threadIdx.x % kCThreads) * Vec16<acc_t>::n};
}

// What a tile conv does with each of its outputs: d_a = conv(src)[b, y, x, c] and d_g = conv(src)[.., Ch + c].

// dst[b, y, x, off + c] = gate(d_a, d_g), dtype Tout.
template <typename Tout, typename acc_t>
struct GateStore {
  View4 dst;
  int64_t off;
  bool sigmoid_gate;
  acc_t gs;
  __device__ __forceinline__ void operator()(const View4&, int64_t b, int y, int x, int c, acc_t a, acc_t g) const {
    Tout* p = static_cast<Tout*>(dst.data) + b * dst.sB + y * dst.sH + static_cast<int64_t>(x) * dst.sW + off + c;
    *p = from_acc<Tout>(sigmoid_gate ? a * sigmoid(g) : a * g * gs);
  }
};

// GD [B, h, w, Ci] (contiguous, compute dtype) = dL/d(d_a, d_g), from gz[b, y, x, gz_off + c] = dL/dz (dtype Tg).
template <typename Tg, typename acc_t>
struct GateBackward {
  View4 gz;
  int64_t gz_off;
  acc_t* GD;
  bool sigmoid_gate;
  acc_t gs;
  __device__ __forceinline__ void operator()(const View4& src, int64_t b, int y, int x, int c, acc_t a,
                                             acc_t g) const {
    const acc_t go = to_acc<acc_t>(
        static_cast<const Tg*>(gz.data)[b * gz.sB + y * gz.sH + static_cast<int64_t>(x) * gz.sW + gz_off + c]);
    acc_t ga, gg;
    if (sigmoid_gate) {
      const acc_t s = sigmoid(g);
      ga = go * s;
      gg = go * a * s * (acc_t(1) - s);
    } else {
      ga = go * g * gs;
      gg = go * a * gs;
    }
    acc_t* px = GD + ((b * src.H + y) * src.W + x) * src.C;
    px[c] = ga;
    px[src.C / 2 + c] = gg;
  }
};

// dst [B, h, w, Ci] (contiguous, compute dtype) += (d_a, d_g): the transposed conv, given GD as src and the
// flipped kernel.
template <typename acc_t>
struct AddInto {
  acc_t* dst;
  __device__ __forceinline__ void operator()(const View4& src, int64_t b, int y, int x, int c, acc_t a,
                                             acc_t g) const {
    acc_t* px = dst + ((b * src.H + y) * src.W + x) * src.C;
    px[c] += a;
    px[src.C / 2 + c] += g;
  }
};

// One CTA tile of the depthwise conv of src (dtype Tin) with the packed kernel wp; every output inside the map
// goes to `epi`.
template <typename Tin, typename acc_t, int KT, typename Epilogue>
__global__ void __launch_bounds__(kTileThreads) tile_conv_kernel(View4 src, const acc_t* __restrict__ wp, int K,
                                                                 int Chp, bool vec_ok, Epilogue epi) {
  acc_t* tile = smem_tile<acc_t>();
  const int Ch = static_cast<int>(src.C / 2);
  const TileOrigin t = tile_origin<acc_t>(Ch);
  stage_tile<Tin, acc_t>(src, t, K, vec_ok, tile);
  __syncthreads();
  VecN<acc_t> acc_a[kXW], acc_g[kXW];
  conv_tile<acc_t, KT>(tile, wp, K, Chp, t.c0, acc_a, acc_g);
  const ThreadOut o = thread_out<acc_t>(t);
  if (o.y >= src.H) return;
#pragma unroll
  for (int j = 0; j < kXW; ++j) {
    if (o.x + j >= src.W) break;
#pragma unroll
    for (int i = 0; i < Vec16<acc_t>::n; ++i) {
      if (o.c + i >= Ch) break;
      epi(src, t.b, o.y, o.x + j, o.c + i, acc_a[j].v[i], acc_g[j].v[i]);
    }
  }
}

constexpr int kTapsPerThread = 4;                 // consecutive kx taps of one kernel row per thread
constexpr int kTapGroups = kTileThreads / kCThreads;  // tap groups per CTA

// Weight-gradient partials: CTA (channel block, part, tap-group block) walks the tiles of its part in order;
// each thread owns kTapsPerThread taps (ky, kx0 + t) of one channel vector of both halves and sums
// GD[p] * src[p + tap] over every output p of every tile, reading both from shared memory (the src halo tile
// and the GD tile), with a sliding register window along W. partial: [parts][K * K][2][Chp].
template <typename Tin, typename acc_t>
__global__ void __launch_bounds__(kTileThreads) weight_grad_kernel(View4 src, const acc_t* __restrict__ GD, int K,
                                                                   bool vec_ok, int tiles_per_part,
                                                                   acc_t* __restrict__ partial, int Chp) {
  constexpr int CB = kCB<acc_t>, n = Vec16<acc_t>::n, T = kTapsPerThread;
  acc_t* tile = smem_tile<acc_t>();
  acc_t* gtile = tile + tile_pixels(K) * 2 * CB;  // [kTileH][kTileW][2][CB]
  const int Ch = static_cast<int>(src.C / 2), tw = kTileW + K - 1;
  const int ntx = (static_cast<int>(src.W) + kTileW - 1) / kTileW, nty = (static_cast<int>(src.H) + kTileH - 1) / kTileH;
  const int64_t n_tiles = src.B * ntx * nty;
  const int tid = threadIdx.x + threadIdx.y * blockDim.x;
  const int cv = tid % kCThreads, group = static_cast<int>(blockIdx.z) * kTapGroups + tid / kCThreads;
  const int kx_groups = (K + T - 1) / T;
  const bool active = group < K * kx_groups;
  const int ky = active ? group / kx_groups : 0, kx0 = active ? (group % kx_groups) * T : 0;
  VecN<acc_t> acc_a[T], acc_g[T];
#pragma unroll
  for (int q = 0; q < T; ++q) {
#pragma unroll
    for (int i = 0; i < n; ++i) acc_a[q].v[i] = acc_g[q].v[i] = acc_t(0);
  }
  const int64_t first = static_cast<int64_t>(blockIdx.y) * tiles_per_part;
  const int64_t last = first + tiles_per_part < n_tiles ? first + tiles_per_part : n_tiles;
  for (int64_t tile_id = first; tile_id < last; ++tile_id) {
    TileOrigin t;
    t.b = tile_id / (ntx * nty);
    t.y0 = static_cast<int>((tile_id / ntx) % nty) * kTileH;
    t.x0 = static_cast<int>(tile_id % ntx) * kTileW;
    t.c0 = static_cast<int>(blockIdx.x) * CB;
    __syncthreads();  // the previous tile is no longer read
    stage_tile<Tin, acc_t>(src, t, K, vec_ok, tile);
    for (int e = tid; e < kTileH * kTileW * 2 * CB; e += kTileThreads) {
      const int pix = e / (2 * CB), q = e % (2 * CB), r = pix / kTileW, col = pix % kTileW;
      const int y = t.y0 + r, x = t.x0 + col, c = t.c0 + q % CB;
      acc_t v = acc_t(0);
      if (y < src.H && x < src.W && c < Ch) {
        v = GD[((t.b * src.H + y) * src.W + x) * src.C + (q / CB) * Ch + c];
      }
      gtile[e] = v;
    }
    __syncthreads();
    if (!active) continue;
    for (int r = 0; r < kTileH; ++r) {
      const acc_t* in_row = tile + ((r + ky) * tw + kx0) * 2 * CB + cv * n;
      const acc_t* g_row = gtile + r * kTileW * 2 * CB + cv * n;
      VecN<acc_t> win_a[T], win_g[T];  // slot p % T holds input column x + kx0 + p
#pragma unroll
      for (int p = 0; p < T - 1; ++p) {
        win_a[p] = lds(in_row + p * 2 * CB);
        win_g[p] = lds(in_row + p * 2 * CB + CB);
      }
      // Taps past K (the last group of a row) read up to T - 1 pixels past a row's end, into the next row or
      // the GD tile that follows: allocated, finite, and their sums are never written.
      for (int xb = 0; xb < kTileW; xb += T) {
#pragma unroll
        for (int u = 0; u < T; ++u) {
          const int x = xb + u;
          win_a[(u + T - 1) % T] = lds(in_row + (x + T - 1) * 2 * CB);
          win_g[(u + T - 1) % T] = lds(in_row + (x + T - 1) * 2 * CB + CB);
          const VecN<acc_t> ga = lds(g_row + x * 2 * CB), gg = lds(g_row + x * 2 * CB + CB);
#pragma unroll
          for (int q = 0; q < T; ++q) {
            fma_vec(acc_a[q], win_a[(u + q) % T], ga);
            fma_vec(acc_g[q], win_g[(u + q) % T], gg);
          }
        }
      }
    }
  }
  if (!active) return;
#pragma unroll
  for (int q = 0; q < T; ++q) {
    if (kx0 + q >= K) break;
    acc_t* dst = partial + ((static_cast<int64_t>(blockIdx.y) * K * K + ky * K + kx0 + q) * 2) * Chp +
                 blockIdx.x * CB + cv * n;
#pragma unroll
    for (int i = 0; i < n; ++i) {
      dst[i] = acc_a[q].v[i];
      dst[Chp + i] = acc_g[q].v[i];
    }
  }
}

// gw [K, K, Ci] = sum over parts, in part order, of partial [parts][K * K][2][Chp].
template <typename acc_t>
__global__ void weight_grad_reduce_kernel(const acc_t* __restrict__ partial, int parts, int64_t taps, int64_t Ch,
                                          int64_t Chp, acc_t* __restrict__ gw) {
  const int64_t n = taps * 2 * Ch;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % Ch, hf = (i / Ch) % 2, tap = i / (2 * Ch);
    acc_t s = 0;
    for (int p = 0; p < parts; ++p) s += partial[((p * taps + tap) * 2 + hf) * Chp + c];
    gw[tap * 2 * Ch + hf * Ch + c] = s;
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

int64_t packed_channels(DType dt, int64_t Ch) {
  const int64_t cb = dt == DType::f64 ? kCB<double> : kCB<float>;
  return (Ch + cb - 1) / cb * cb;
}

namespace {

constexpr size_t kDefaultSmem = 48 * 1024;

// Launches a tile kernel on grid (column tiles * channel blocks, row tiles, B), opting in to more than 48 KB of
// shared memory where the tile needs it.
template <typename acc_t, typename Kernel, typename... Args>
cudaError_t launch_tile(Kernel kernel, const View4& map, size_t smem, cudaStream_t stream, Args... args) {
  const int64_t n_cb = (map.C / 2 + kCB<acc_t> - 1) / kCB<acc_t>;
  const int64_t gx = (map.W + kTileW - 1) / kTileW * n_cb, gy = (map.H + kTileH - 1) / kTileH;
  if (gx > 0x7fffffff || gy > 65535 || map.B > 65535) return cudaErrorInvalidConfiguration;
  if (smem > kDefaultSmem) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(static_cast<unsigned int>(gx), static_cast<unsigned int>(gy), static_cast<unsigned int>(map.B));
  kernel<<<grid, dim3(kCThreads * kWThreads, kTileH), smem, stream>>>(args...);
  return cudaGetLastError();
}

}  // namespace

namespace {

// The tile conv of src (storage dtype Tin) with epilogue `epi`, K specialised where it can be.
template <typename Tin, typename acc_t, typename Epilogue>
cudaError_t launch_tile_conv(const View4& src, const void* wp, int64_t K, int64_t Chp, Epilogue epi,
                             cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  with_tile_k(K, [&](auto kc) {
    err = launch_tile<acc_t>(tile_conv_kernel<Tin, acc_t, decltype(kc)::value, Epilogue>, src, tile_bytes<acc_t>(K),
                             stream, src, static_cast<const acc_t*>(wp), static_cast<int>(K), static_cast<int>(Chp),
                             vector_loads_ok<Tin, acc_t>(src), epi);
  });
  return err;
}

}  // namespace

cudaError_t conv_gate(DType dt, const View4& src, const void* wp, int64_t K, int64_t Chp, const View4& dst,
                      int64_t dst_off, bool is_acc, bool sigmoid_gate, double gate_scale, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  dispatch_dtype(dt, [&](auto t) {
    using T = decltype(t);
    using acc_t = Acc<T>;
    const auto gs = static_cast<acc_t>(gate_scale);
    if (is_acc) {
      err = launch_tile_conv<acc_t, acc_t>(src, wp, K, Chp, GateStore<acc_t, acc_t>{dst, dst_off, sigmoid_gate, gs},
                                           stream);
    } else {
      err = launch_tile_conv<T, acc_t>(src, wp, K, Chp, GateStore<T, acc_t>{dst, dst_off, sigmoid_gate, gs}, stream);
    }
  });
  return err;
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

cudaError_t gate_backward(DType dt, const View4& src, const void* wp, int64_t K, int64_t Chp, const View4& gz,
                          int64_t gz_off, bool is_acc, void* GD, bool sigmoid_gate, double gate_scale,
                          cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  dispatch_dtype(dt, [&](auto t) {
    using T = decltype(t);
    using acc_t = Acc<T>;
    auto* gd = static_cast<acc_t*>(GD);
    const auto gs = static_cast<acc_t>(gate_scale);
    if (is_acc) {
      err = launch_tile_conv<acc_t, acc_t>(src, wp, K, Chp,
                                           GateBackward<acc_t, acc_t>{gz, gz_off, gd, sigmoid_gate, gs}, stream);
    } else {
      err = launch_tile_conv<T, acc_t>(src, wp, K, Chp, GateBackward<T, acc_t>{gz, gz_off, gd, sigmoid_gate, gs},
                                       stream);
    }
  });
  return err;
}

cudaError_t conv_transpose_add(DType dt, const void* GD, int64_t B, int64_t h, int64_t w, int64_t Ci,
                               const void* wp_flipped, int64_t K, int64_t Chp, void* dst, cudaStream_t stream) {
  const View4 src = contiguous_view(const_cast<void*>(GD), B, h, w, Ci);
  if (dt == DType::f64) {
    return launch_tile_conv<double, double>(src, wp_flipped, K, Chp, AddInto<double>{static_cast<double*>(dst)},
                                            stream);
  }
  return launch_tile_conv<float, float>(src, wp_flipped, K, Chp, AddInto<float>{static_cast<float*>(dst)}, stream);
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

namespace {

// The fixed partition of a map's tiles into weight-gradient parts: it depends on the shape only, never on the
// device, so the fixed-order sum over parts gives the same bits everywhere.
struct WeightGradSplit {
  int64_t n_tiles, parts, tiles_per_part;
};

WeightGradSplit weight_grad_split(const View4& src) {
  constexpr int64_t kMaxParts = 64;
  const int64_t n_tiles = src.B * ((src.H + kTileH - 1) / kTileH) * ((src.W + kTileW - 1) / kTileW);
  const int64_t per = (n_tiles + kMaxParts - 1) / kMaxParts;
  return {n_tiles, (n_tiles + per - 1) / per, per};
}

}  // namespace

int64_t weight_grad_workspace_bytes(DType dt, const View4& src, int64_t K) {
  const int64_t acc_size = dt == DType::f64 ? 8 : 4;
  return weight_grad_split(src).parts * K * K * 2 * packed_channels(dt, src.C / 2) * acc_size;
}

cudaError_t weight_grad(DType dt, const View4& src, bool src_is_acc, const void* GD, int64_t K, void* workspace,
                        void* gw, cudaStream_t stream) {
  const WeightGradSplit split = weight_grad_split(src);
  const int64_t kx_groups = (K + kTapsPerThread - 1) / kTapsPerThread;
  const int64_t gz = (K * kx_groups + kTapGroups - 1) / kTapGroups;
  cudaError_t err = cudaSuccess;
  dispatch_dtype(dt, [&](auto t) {
    using T = decltype(t);
    using acc_t = Acc<T>;
    const int64_t Ch = src.C / 2, Chp = packed_channels(dt, Ch), n_cb = Chp / kCB<acc_t>;
    const size_t smem = tile_bytes<acc_t>(K) + static_cast<size_t>(kTileH) * kTileW * 2 * kCB<acc_t> * sizeof(acc_t);
    auto* part = static_cast<acc_t*>(workspace);
    auto launch = [&](auto kernel, bool vec_ok) {
      if (smem > kDefaultSmem) {
        err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
        if (err != cudaSuccess) return;
      }
      const dim3 grid(static_cast<unsigned int>(n_cb), static_cast<unsigned int>(split.parts),
                      static_cast<unsigned int>(gz));
      kernel<<<grid, dim3(kCThreads * kWThreads, kTileH), smem, stream>>>(
          src, static_cast<const acc_t*>(GD), static_cast<int>(K), vec_ok, static_cast<int>(split.tiles_per_part),
          part, static_cast<int>(Chp));
      err = cudaGetLastError();
    };
    if (src_is_acc) {
      launch(weight_grad_kernel<acc_t, acc_t>, vector_loads_ok<acc_t, acc_t>(src));
    } else {
      launch(weight_grad_kernel<T, acc_t>, vector_loads_ok<T, acc_t>(src));
    }
    if (err != cudaSuccess) return;
    weight_grad_reduce_kernel<acc_t><<<blocks_for(K * K * 2 * Ch), kThreads, 0, stream>>>(
        part, static_cast<int>(split.parts), K * K, Ch, Chp, static_cast<acc_t*>(gw));
    err = cudaGetLastError();
  });
  return err;
}

}  // namespace deltaconv::cuda
