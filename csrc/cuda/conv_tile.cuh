// The shared-memory halo tile of the depthwise K x K correlation (docs/DESIGN.md §2), used by the forward conv + gate,
// the gate backward (which recomputes the conv), the transposed conv and the weight gradient.
//
// A CTA owns a tile of kTileH x kTileW output pixels of one sample and a channel block: CB channels of the
// first half (`a`) and the same CB channels of the second half (`g`), CB * sizeof(acc) = 32 bytes. It stages
// the (kTileH + K - 1) x (kTileW + K - 1) halo of its input once, converted to the compute dtype (16-byte loads
// when the layout allows it), then every thread computes kXW outputs along W times one 16-byte vector of
// channels of both halves, reading its inputs from shared memory. In-tile offsets are 32-bit; the per-row
// bases into global memory are 64-bit, so maps beyond 2^31 elements stay correct.
#pragma once

#include "device_utils.cuh"

namespace deltaconv::cuda {

constexpr int kTileH = 4;                   // output rows per CTA (threadIdx.y)
constexpr int kXW = 4;                      // output columns per thread
constexpr int kWThreads = 8;                // threads along W
constexpr int kTileW = kXW * kWThreads;     // output columns per CTA
constexpr int kCThreads = 2;                // 16-byte channel vectors per half per CTA
constexpr int kTileThreads = kCThreads * kWThreads * kTileH;

// A 16-byte vector of the compute dtype.
template <typename acc_t> struct Vec16;
template <> struct Vec16<float> {
  using type = float4;
  static constexpr int n = 4;
};
template <> struct Vec16<double> {
  using type = double2;
  static constexpr int n = 2;
};

template <typename acc_t>
constexpr int kCB = kCThreads * Vec16<acc_t>::n;  // channels per half per CTA

template <typename acc_t>
struct VecN {
  acc_t v[Vec16<acc_t>::n];
};

template <typename acc_t>
__device__ __forceinline__ VecN<acc_t> lds(const acc_t* p) {  // p is 16-byte aligned shared memory
  VecN<acc_t> r;
  const auto raw = *reinterpret_cast<const typename Vec16<acc_t>::type*>(p);
  static_assert(sizeof(raw) == sizeof(r), "16-byte vector");
  memcpy(&r, &raw, sizeof(r));
  return r;
}

template <typename acc_t>
__device__ __forceinline__ VecN<acc_t> ldg(const acc_t* p) {  // p is 16-byte aligned global memory
  VecN<acc_t> r;
  const auto raw = __ldg(reinterpret_cast<const typename Vec16<acc_t>::type*>(p));
  memcpy(&r, &raw, sizeof(r));
  return r;
}

template <typename acc_t>
__device__ __forceinline__ void fma_vec(VecN<acc_t>& acc, const VecN<acc_t>& a, const VecN<acc_t>& b) {
#pragma unroll
  for (int i = 0; i < Vec16<acc_t>::n; ++i) acc.v[i] = fma(a.v[i], b.v[i], acc.v[i]);
}

// Where a CTA's tile lies: sample b, first output row y0 / column x0, first channel c0 within a half.
struct TileOrigin {
  int64_t b;
  int y0, x0, c0;
};

// blockIdx.x = column tile * channel blocks + channel block, blockIdx.y = row tile, blockIdx.z = sample.
template <typename acc_t>
__device__ __forceinline__ TileOrigin tile_origin(int Ch) {
  const int n_cb = (Ch + kCB<acc_t> - 1) / kCB<acc_t>;
  TileOrigin t;
  t.b = blockIdx.z;
  t.y0 = static_cast<int>(blockIdx.y) * kTileH;
  t.x0 = static_cast<int>(blockIdx.x / n_cb) * kTileW;
  t.c0 = static_cast<int>(blockIdx.x % n_cb) * kCB<acc_t>;
  return t;
}

// Shared-memory size of a tile: (kTileH + K - 1) x (kTileW + K - 1) pixels of 2 * CB channels.
__host__ __device__ constexpr int tile_pixels(int K) {
  return (kTileH + K - 1) * (kTileW + K - 1);
}

template <typename acc_t>
inline size_t tile_bytes(int K) {
  return static_cast<size_t>(tile_pixels(K)) * 2 * kCB<acc_t> * sizeof(acc_t);
}

// Stages the halo of `src` (channels c0 + [0, CB) of both halves; zeros outside the map and past Ch) into
// tile[pixel][half][CB]. `vec_ok`: every 16-byte chunk of a half block is aligned and inside the map's channels.
template <typename Tin, typename acc_t>
__device__ __forceinline__ void stage_tile(const View4& src, const TileOrigin& t, int K, bool vec_ok,
                                           acc_t* __restrict__ tile) {
  constexpr int CB = kCB<acc_t>;
  const int half = K / 2, Ch = static_cast<int>(src.C / 2), tw = kTileW + K - 1;
  const int n_pix = tile_pixels(K);
  const int tid = threadIdx.x + threadIdx.y * blockDim.x;
  const Tin* base = static_cast<const Tin*>(src.data) + t.b * src.sB;
  constexpr int kChunk = 16 / sizeof(Tin);  // elements per 16-byte load
  constexpr bool kCanVec = CB % kChunk == 0 && CB >= kChunk;
  if (kCanVec && vec_ok) {
    constexpr int per_half = kCanVec ? CB / kChunk : 1;
    constexpr int chunks = 2 * per_half;  // per pixel, both halves
    for (int e = tid; e < n_pix * chunks; e += kTileThreads) {
      const int pix = e / chunks, q = e % chunks, r = pix / tw, col = pix % tw;
      const int y = t.y0 + r - half, x = t.x0 + col - half;
      const int hf = q / per_half, c = (q % per_half) * kChunk;
      acc_t* dst = tile + (pix * 2 + hf) * CB + c;
      if (y >= 0 && y < src.H && x >= 0 && x < src.W) {
        const Tin* p = base + y * src.sH + static_cast<int64_t>(x) * src.sW + hf * Ch + t.c0 + c;
        const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
        Tin vals[kChunk];
        memcpy(vals, &raw, sizeof(raw));
#pragma unroll
        for (int i = 0; i < kChunk; ++i) dst[i] = to_acc<acc_t>(vals[i]);
      } else {
#pragma unroll
        for (int i = 0; i < kChunk; ++i) dst[i] = acc_t(0);
      }
    }
  } else {
    for (int e = tid; e < n_pix * 2 * CB; e += kTileThreads) {
      const int pix = e / (2 * CB), q = e % (2 * CB), r = pix / tw, col = pix % tw;
      const int y = t.y0 + r - half, x = t.x0 + col - half, hf = q / CB, c = t.c0 + q % CB;
      acc_t v = acc_t(0);
      if (y >= 0 && y < src.H && x >= 0 && x < src.W && c < Ch) {
        v = to_acc<acc_t>(base[y * src.sH + static_cast<int64_t>(x) * src.sW + hf * Ch + c]);
      }
      tile[pix * 2 * CB + hf * CB + q % CB] = v;
    }
  }
}

// Whether 16-byte loads of CB-channel half blocks of `v` are aligned and in range.
template <typename Tin, typename acc_t>
inline bool vector_loads_ok(const View4& v) {
  constexpr int64_t chunk = 16 / sizeof(Tin);
  const int64_t Ch = v.C / 2;
  return reinterpret_cast<uintptr_t>(v.data) % 16 == 0 && Ch % kCB<acc_t> == 0 && Ch % chunk == 0 &&
         v.sW % chunk == 0 && v.sH % chunk == 0 && v.sB % chunk == 0 && kCB<acc_t> % chunk == 0;
}

// The conv of this thread's kXW outputs (row threadIdx.y, columns kXW * (threadIdx.x / kCThreads) + j) and its
// channel vector (threadIdx.x % kCThreads) of both halves. wp: packed weights [K * K][2][Chp] (16-byte aligned
// vectors). KT > 0: K known at compile time, inputs reused from a sliding register window across taps.
template <typename acc_t, int KT>
__device__ __forceinline__ void conv_tile(const acc_t* __restrict__ tile, const acc_t* __restrict__ wp, int K, int Chp,
                                          int c0, VecN<acc_t> (&acc_a)[kXW], VecN<acc_t> (&acc_g)[kXW]) {
  constexpr int CB = kCB<acc_t>, n = Vec16<acc_t>::n;
  const int cv = threadIdx.x % kCThreads, wgrp = threadIdx.x / kCThreads;
  const int tw = kTileW + K - 1;
#pragma unroll
  for (int j = 0; j < kXW; ++j) {
#pragma unroll
    for (int i = 0; i < n; ++i) acc_a[j].v[i] = acc_g[j].v[i] = acc_t(0);
  }
  const acc_t* wbase = wp + c0 + cv * n;
  const int kk = KT > 0 ? KT : K;
#pragma unroll 1
  for (int ky = 0; ky < kk; ++ky) {
    const acc_t* row = tile + ((threadIdx.y + ky) * tw + wgrp * kXW) * 2 * CB + cv * n;
    const acc_t* wrow = wbase + ky * kk * 2 * Chp;
    if constexpr (KT > 0) {
      VecN<acc_t> win_a[kXW], win_g[kXW];  // slot p % kXW holds input column p
#pragma unroll
      for (int p = 0; p < kXW; ++p) {
        win_a[p] = lds(row + p * 2 * CB);
        win_g[p] = lds(row + p * 2 * CB + CB);
      }
#pragma unroll
      for (int kx = 0; kx < KT; ++kx) {
        const VecN<acc_t> wa = ldg(wrow + kx * 2 * Chp), wg = ldg(wrow + kx * 2 * Chp + Chp);
#pragma unroll
        for (int j = 0; j < kXW; ++j) {
          fma_vec(acc_a[j], win_a[(kx + j) % kXW], wa);
          fma_vec(acc_g[j], win_g[(kx + j) % kXW], wg);
        }
        if (kx + 1 < KT) {  // column kx + kXW replaces column kx
          win_a[kx % kXW] = lds(row + (kx + kXW) * 2 * CB);
          win_g[kx % kXW] = lds(row + (kx + kXW) * 2 * CB + CB);
        }
      }
    } else {
#pragma unroll 1
      for (int kx = 0; kx < K; ++kx) {
        const VecN<acc_t> wa = ldg(wrow + kx * 2 * Chp), wg = ldg(wrow + kx * 2 * Chp + Chp);
#pragma unroll
        for (int j = 0; j < kXW; ++j) {
          fma_vec(acc_a[j], lds(row + (kx + j) * 2 * CB), wa);
          fma_vec(acc_g[j], lds(row + (kx + j) * 2 * CB + CB), wg);
        }
      }
    }
  }
}

// Calls f(std::integral_constant<int, KT>) with KT = K for the kernel sizes of the released models, KT = 0
// (runtime K) otherwise.
template <typename F>
void with_tile_k(int64_t K, F&& f) {
  switch (K) {
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    case 9: f(std::integral_constant<int, 9>{}); break;
    case 11: f(std::integral_constant<int, 11>{}); break;
    case 13: f(std::integral_constant<int, 13>{}); break;
    default: f(std::integral_constant<int, 0>{}); break;
  }
}

}  // namespace deltaconv::cuda
