// CPU kernels of the fused pyramid stage and the pooled-bias mean (docs/DESIGN.md §2), channels-last.
//
// The input u is read where it lies, in its own dtype and strides: a bf16 / fp16 vector is converted to fp32 in
// registers as it is loaded (F16C / AVX-512F conversions), and that one vector feeds every tap of its kernel row
// it meets. No full-size converted copy of u is made; the internal buffers (pooled planes, gradient planes) are
// fp32 (fp64 for fp64 tensors) and channel-blocked. Channels are innermost and vectorised with at::vec; rows are
// spread over threads with at::parallel_for. Every output element (and every partial sum of a weight gradient)
// is written by exactly one task in a fixed order, so results do not depend on the thread count.
//
// Channel blocks: the channels of a map are read in blocks of V lanes, each half (a and g of the gate) on its
// own, so block j of `a` and block j of `g` line up lane by lane; a block that is not full (half a width not a
// multiple of V) reads only its real lanes. Horizontal zero padding is a bounds check on the pixel index
// (a pointer select to a zero vector, no branch), vertical padding a skipped kernel row.
//
// The K x K loops are register-blocked (docs/DESIGN.md §2): XB output pixels along W times one vector of channels,
// the taps of a kernel row taken in chunks that fit the registers, each input vector of a row loaded (and
// converted) once per chunk and used for every tap of the chunk it meets. K is a template parameter up to
// kMaxFixedK; other K (and partial channel blocks, and fp64) take a generic loop.
//
// The AVX512BF16 copy adds bf16 dot products (vdpbf16ps) for the correlation of bf16 u with bf16-exact
// weights: two kernel rows per instruction, paired lane by lane (row 2p and 2p+1 of a pixel), fp32 accumulation.
//
// This is the one vectorised translation unit, compiled once per instruction set of csrc/cpu/isa.def (the
// build passes that ISA's -m flags and the CPU_CAPABILITY macros); each copy lives in namespace
// deltaconv::cpu::<ISA> and ends with its table of entry points, and csrc/cpu/capability.cpp picks one per call.

#if !defined(CPU_CAPABILITY)
#error "compile csrc/cpu/kernels.cpp once per ISA of csrc/cpu/isa.def, with -DCPU_CAPABILITY=<ISA> (setup.py and CMake do)"
#endif
#if defined(CPU_CAPABILITY_AVX512BF16)
#define CPU_CAPABILITY_AVX512  // at::vec's 512-bit vectors; this copy adds the bf16 dot products on top
#endif

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#if defined(CPU_CAPABILITY_AVX512BF16)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "deltaconv/cpu_kernels.h"
#include "deltaconv/geometry.h"

namespace deltaconv::cpu::CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

template <typename acc_t>
constexpr int64_t kVec = Vectorized<acc_t>::size();

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// ---- loads and stores with dtype conversion ---------------------------------------------------------------

// V lanes of dtype S at p as acc_t; bf16 / fp16 are converted in registers.
template <typename S, typename acc_t>
inline Vectorized<acc_t> load_px(const S* p) {
  if constexpr (std::is_same_v<S, acc_t>) {
    return Vectorized<acc_t>::loadu(p);
  } else if constexpr (std::is_same_v<S, c10::BFloat16>) {
    Vectorized<float> v;
    at::vec::load_fp32_from_bf16(p, v);
    return v;
  } else {
    static_assert(std::is_same_v<S, c10::Half>);
    Vectorized<float> v;
    at::vec::load_fp32_from_fp16(p, v);
    return v;
  }
}

// The first m lanes at p (the rest zero); reads nothing past lane m.
template <typename S, typename acc_t>
Vectorized<acc_t> load_px(const S* p, int64_t m) {
  constexpr int64_t V = kVec<acc_t>;
  if (m == V) return load_px<S, acc_t>(p);
  acc_t tmp[V] = {};
  for (int64_t c = 0; c < m; ++c) tmp[c] = static_cast<acc_t>(p[c]);
  return Vectorized<acc_t>::loadu(tmp);
}

// The first m lanes of v to dst, rounded once to T (round-to-nearest-even).
template <typename T, typename acc_t>
void store_px(const Vectorized<acc_t>& v, T* dst, int64_t m) {
  constexpr int64_t V = kVec<acc_t>;
  if constexpr (std::is_same_v<T, acc_t>) {
    if (m == V) {
      v.store(dst);
    } else {
      v.store(dst, m);
    }
  } else {
    static_assert(std::is_same_v<acc_t, float>);
    at::vec::convert_from_float<T>(v, v).store(dst, m);
  }
}

// V zero elements of every dtype: the source of the loads of pixels outside the map.
template <typename S>
alignas(64) constexpr S kZeros[64] = {};

// ---- channel blocking ----------------------------------------------------------------------------------------

struct Blocking {
  int64_t Ci, Ch, V, nh, nCB;
  Blocking(int64_t Ci_, int64_t V_) : Ci(Ci_), Ch(Ci_ / 2), V(V_), nh((Ci_ / 2 + V_ - 1) / V_), nCB(2 * nh) {}
  // First channel of block cb in the [.., Ci] tensor layout, and how many real lanes it holds.
  int64_t first(int64_t cb) const { return cb < nh ? cb * V : Ch + (cb - nh) * V; }
  int64_t count(int64_t cb) const { return std::min<int64_t>(V, Ch - (cb < nh ? cb : cb - nh) * V); }
};

// K rows of one channel block, for a K x K correlation centred on one row: pixel ix (0 <= ix < n) of kernel row
// ky has its lanes at rows[ky] + ix * step; rows[ky] == nullptr is a zero row (outside the map). `m` lanes are
// real (a read stops there).
template <typename S>
struct TapRows {
  const S* const* rows;
  int64_t step, n, m;
  // Pixel ix of row r, or a zero vector outside [0, n): a select, not a branch.
  const S* px(const S* r, int64_t ix) const {
    return static_cast<uint64_t>(ix) < static_cast<uint64_t>(n) ? r + ix * step : kZeros<S>;
  }
};

// A [B, h, w, Ci] map read by channel blocks: a tensor of dtype S in its own strides (sCB == 0: block cb starts at
// channel Blocking::first(cb) and holds count(cb) real lanes), or a Plane (sCB > 0: V lanes per pixel).
template <typename S>
struct BlockMap {
  const S* data;
  int64_t h, w, sB, sH, sW, sCB;
  const Blocking* bl;
  const S* row(int64_t b, int64_t y, int64_t cb) const {
    return data + b * sB + y * sH + (sCB > 0 ? cb * sCB : bl->first(cb));
  }
  int64_t lanes(int64_t cb) const { return sCB > 0 ? bl->V : bl->count(cb); }
  TapRows<S> taps(int64_t b, int64_t y, int64_t cb, int64_t K, const S** rows) const {
    const int64_t half = K / 2;
    for (int64_t ky = 0; ky < K; ++ky) {
      const int64_t iy = y + ky - half;
      rows[ky] = (iy < 0 || iy >= h) ? nullptr : row(b, iy, cb);
    }
    return TapRows<S>{rows, sW, w, lanes(cb)};
  }
};

template <typename T>
BlockMap<T> tensor_map(const View4& v, const Blocking& bl) {
  return BlockMap<T>{static_cast<const T*>(v.data), v.H, v.W, v.sB, v.sH, v.sW, 0, &bl};
}

// A [B, h, w, Ci] compute-dtype map, channel-blocked: a row is nCB strips of w pixels x V lanes. `zero_all`
// zero-fills it (for accumulators); otherwise the writer must write every lane of every pixel (zeroing the
// filler lanes of a partial block).
template <typename acc_t>
struct Plane {
  int64_t B, h, w, nCB, V;
  std::unique_ptr<acc_t[]> buf;
  acc_t* data;
  Plane(int64_t B_, int64_t h_, int64_t w_, const Blocking& bl, bool zero_all)
      : B(B_), h(h_), w(w_), nCB(bl.nCB), V(bl.V),
        buf(new acc_t[static_cast<size_t>(std::max<int64_t>(1, B_ * h_ * bl.nCB * w_ * bl.V))]), data(buf.get()) {
    if (!zero_all) return;
    const int64_t strips = B * h * nCB, len = w * V;
    at::parallel_for(0, strips, 64, [&](int64_t begin, int64_t end) {
      std::fill(data + begin * len, data + end * len, acc_t(0));
    });
  }
  acc_t* pix(int64_t b, int64_t y, int64_t cb, int64_t x) { return data + ((b * h + y) * nCB + cb) * w * V + x * V; }
  BlockMap<acc_t> map(const Blocking& bl) const {
    return BlockMap<acc_t>{data, h, w, h * nCB * w * V, nCB * w * V, V, w * V, &bl};
  }
};

// Weights [K, K, Ci] -> blocked [nCB][K * K][V]; `flip` gives w[K-1-ky, K-1-kx] (the transposed correlation).
template <typename acc_t>
std::vector<acc_t> block_weight(const acc_t* w, int64_t K, const Blocking& bl, bool flip) {
  std::vector<acc_t> out(static_cast<size_t>(bl.nCB * K * K * bl.V), acc_t(0));
  for (int64_t cb = 0; cb < bl.nCB; ++cb) {
    for (int64_t t = 0; t < K * K; ++t) {
      const int64_t src = flip ? K * K - 1 - t : t;
      std::memcpy(out.data() + (cb * K * K + t) * bl.V, w + src * bl.Ci + bl.first(cb), sizeof(acc_t) * bl.count(cb));
    }
  }
  return out;
}

// ---- the K x K depthwise correlation of one strip ---------------------------------------------------------------

// Vector registers of the instruction set the file is compiled for (AVX-512: 32, AVX2 and portable: 16).
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kVecRegs = 32;
constexpr int kMaxXB = 12;
#else
constexpr int kVecRegs = 16;
constexpr int kMaxXB = 8;
#endif
constexpr int kMaxFixedK = 15;  // largest K with a register-blocked specialisation

// Register blocking for a compile-time K: taps per chunk (KC weight or accumulator vectors; a row's K taps split
// into equal chunks of at most kMaxChunk) and output pixels per block (XB), so that KC + XB + 4 (an input, a
// conversion temporary and slack) fit the vector registers.
constexpr int kMaxChunk = kVecRegs / 2 - 1;
template <int K>
constexpr int kChunk = (K + (K + kMaxChunk - 1) / kMaxChunk - 1) / ((K + kMaxChunk - 1) / kMaxChunk);
template <int K>
constexpr int kBlock = std::min(kMaxXB, kVecRegs - 4 - kChunk<K>);

template <typename acc_t>
void store_or_add(const Vectorized<acc_t>& v, acc_t* dst, bool accumulate) {
  (accumulate ? Vectorized<acc_t>::loadu(dst) + v : v).store(dst);
}

// out[x] (+)= sum_{ky, kx < K} px(ky, x + kx - K/2) * w[ky * K + kx]   (vectors of V lanes), for x0 <= x < x1.
template <typename S, typename acc_t>
void conv_strip_generic(const TapRows<S>& t, const acc_t* w, int64_t K, int64_t x0, int64_t x1, acc_t* out,
                        bool accumulate) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  const int64_t half = K / 2;
  for (int64_t x = x0; x < x1; ++x) {
    Vec acc(acc_t(0));
    for (int64_t ky = 0; ky < K; ++ky) {
      if (t.rows[ky] == nullptr) continue;
      for (int64_t kx = 0; kx < K; ++kx) {
        const int64_t ix = x + kx - half;
        if (ix < 0 || ix >= t.n) continue;
        acc = at::vec::fmadd(load_px<S, acc_t>(t.rows[ky] + ix * t.step, t.m), Vec::loadu(w + (ky * K + kx) * V), acc);
      }
    }
    store_or_add(acc, out + x * V, accumulate);
  }
}

// Input pixel ix0 + i of row r: unchecked inside the map, else a zero vector outside it.
template <typename S, bool Checked>
__attribute__((always_inline)) inline const S* input_px(const TapRows<S>& t, const S* r, int64_t ix) {
  return Checked ? t.px(r, ix) : r + ix * t.step;
}

// Taps K0 .. K0+KN-1 of one kernel row r for the XB outputs x .. x+XB-1: the KN weights in registers, each input
// vector loaded (and converted) once and used for every output it meets.
template <typename S, typename acc_t, int K, int K0, int KN, int XB, bool Checked>
__attribute__((always_inline)) inline void conv_chunk(const TapRows<S>& t, const S* r, const acc_t* wrow, int64_t x,
                                                      Vectorized<acc_t>* acc) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  Vec wr[KN];
#pragma GCC unroll 16
  for (int k = 0; k < KN; ++k) wr[k] = Vec::loadu(wrow + (K0 + k) * V);
  const int64_t ix0 = x + K0 - K / 2;
#pragma GCC unroll 32
  for (int i = 0; i < XB + KN - 1; ++i) {
    const Vec in = load_px<S, acc_t>(input_px<S, Checked>(t, r, ix0 + i));
#pragma GCC unroll 16
    for (int j = 0; j < XB; ++j) {
      const int k = i - j;
      if (k >= 0 && k < KN) acc[j] = at::vec::fmadd(in, wr[k], acc[j]);
    }
  }
}

template <typename S, typename acc_t, int K, int XB, bool Checked>
void conv_block(const TapRows<S>& t, const acc_t* w, int64_t x, acc_t* out, bool accumulate) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  constexpr int KC = kChunk<K>;
  Vec acc[XB];
#pragma GCC unroll 16
  for (int j = 0; j < XB; ++j) acc[j] = Vec(acc_t(0));
  for (int ky = 0; ky < K; ++ky) {
    const S* r = t.rows[ky];
    if (r == nullptr) continue;
    [&]<int... C>(std::integer_sequence<int, C...>) {
      (conv_chunk<S, acc_t, K, C * KC, std::min(KC, K - C * KC), XB, Checked>(t, r, w + ky * K * V, x, acc), ...);
    }(std::make_integer_sequence<int, (K + KC - 1) / KC>{});
  }
#pragma GCC unroll 16
  for (int j = 0; j < XB; ++j) store_or_add(acc[j], out + (x + j) * V, accumulate);
}

// Whether the XB pixels from x read only pixels inside the row (no bounds checks needed).
inline bool interior(int64_t x, int64_t XB, int64_t half, int64_t n) { return x >= half && x + XB + half <= n; }

template <typename S, typename acc_t, int K>
void conv_strip_fixed(const TapRows<S>& t, const acc_t* w, int64_t x0, int64_t x1, acc_t* out, bool accumulate) {
  constexpr int XB = kBlock<K>;
  int64_t x = x0;
  for (; x + XB <= x1; x += XB) {
    if (interior(x, XB, K / 2, t.n)) {
      conv_block<S, acc_t, K, XB, false>(t, w, x, out, accumulate);
    } else {
      conv_block<S, acc_t, K, XB, true>(t, w, x, out, accumulate);
    }
  }
  for (; x < x1; ++x) conv_block<S, acc_t, K, 1, true>(t, w, x, out, accumulate);
}

// gw[ky * K + kx] += sum_{x0 <= x < x1} gd[x] * px(ky, x + kx - K/2)   (vectors of V lanes)
template <typename S, typename acc_t>
void weight_grad_strip_generic(const TapRows<S>& t, const acc_t* gd, int64_t K, int64_t x0, int64_t x1, acc_t* gw) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  const int64_t half = K / 2;
  for (int64_t ky = 0; ky < K; ++ky) {
    if (t.rows[ky] == nullptr) continue;
    for (int64_t kx = 0; kx < K; ++kx) {
      Vec acc(acc_t(0));
      for (int64_t x = std::max(x0, half - kx); x < std::min(x1, t.n + half - kx); ++x) {
        acc = at::vec::fmadd(Vec::loadu(gd + x * V), load_px<S, acc_t>(t.rows[ky] + (x + kx - half) * t.step, t.m), acc);
      }
      store_or_add(acc, gw + (ky * K + kx) * V, true);
    }
  }
}

// Taps K0 .. K0+KN-1 of kernel row r, pixels x .. x+XB-1: the XB gradient vectors loaded once, then each input
// vector once, feeding the KN tap accumulators it meets.
template <typename S, typename acc_t, int K, int K0, int KN, int XB, bool Checked>
__attribute__((always_inline)) inline void weight_grad_block(const TapRows<S>& t, const S* r, const acc_t* gd,
                                                             int64_t x, Vectorized<acc_t>* acc) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  Vec g[XB];
#pragma GCC unroll 16
  for (int j = 0; j < XB; ++j) g[j] = Vec::loadu(gd + (x + j) * V);
  const int64_t ix0 = x + K0 - K / 2;
#pragma GCC unroll 32
  for (int i = 0; i < XB + KN - 1; ++i) {
    const Vec in = load_px<S, acc_t>(input_px<S, Checked>(t, r, ix0 + i));
#pragma GCC unroll 16
    for (int j = 0; j < XB; ++j) {
      const int k = i - j;
      if (k >= 0 && k < KN) acc[k] = at::vec::fmadd(g[j], in, acc[k]);
    }
  }
}

template <typename S, typename acc_t, int K, int K0, int KN>
void weight_grad_chunk(const TapRows<S>& t, const S* r, const acc_t* gd, int64_t x0, int64_t x1, acc_t* gwrow) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  constexpr int XB = kBlock<K>;
  Vec acc[KN];
#pragma GCC unroll 16
  for (int k = 0; k < KN; ++k) acc[k] = Vec(acc_t(0));
  int64_t x = x0;
  for (; x + XB <= x1; x += XB) {
    // The block reads pixels x + K0 - K/2 .. x + XB - 1 + K0 + KN - 1 - K/2.
    if (x + K0 - K / 2 >= 0 && x + XB + K0 + KN - 1 - K / 2 <= t.n) {
      weight_grad_block<S, acc_t, K, K0, KN, XB, false>(t, r, gd, x, acc);
    } else {
      weight_grad_block<S, acc_t, K, K0, KN, XB, true>(t, r, gd, x, acc);
    }
  }
  for (; x < x1; ++x) weight_grad_block<S, acc_t, K, K0, KN, 1, true>(t, r, gd, x, acc);
#pragma GCC unroll 16
  for (int k = 0; k < KN; ++k) store_or_add(acc[k], gwrow + (K0 + k) * V, true);
}

template <typename S, typename acc_t, int K>
void weight_grad_strip_fixed(const TapRows<S>& t, const acc_t* gd, int64_t x0, int64_t x1, acc_t* gw) {
  constexpr int64_t V = kVec<acc_t>;
  constexpr int KC = kChunk<K>;
  for (int ky = 0; ky < K; ++ky) {
    const S* r = t.rows[ky];
    if (r == nullptr) continue;
    [&]<int... C>(std::integer_sequence<int, C...>) {
      (weight_grad_chunk<S, acc_t, K, C * KC, std::min(KC, K - C * KC)>(t, r, gd, x0, x1, gw + ky * K * V), ...);
    }(std::make_integer_sequence<int, (K + KC - 1) / KC>{});
  }
}

// Calls f(std::integral_constant<int, K>) when K is odd and <= kMaxFixedK; else returns false.
template <typename F>
bool with_fixed_k(int64_t K, F&& f) {
  bool done = false;
  auto try_k = [&](auto kc) {
    if (K == decltype(kc)::value) {
      f(kc);
      done = true;
    }
  };
  [&]<int... I>(std::integer_sequence<int, I...>) {
    (try_k(std::integral_constant<int, 2 * I + 1>{}), ...);
  }(std::make_integer_sequence<int, (kMaxFixedK + 1) / 2>{});
  return done;
}

// The register-blocked loops take full blocks of fp32 maps; partial blocks, fp64 and large K the generic ones.
template <typename S, typename acc_t>
bool fixed_path(const TapRows<S>& t) {
  return std::is_same_v<acc_t, float> && t.m == kVec<acc_t>;
}

// The correlation of one channel block for the outputs x0 <= x < x1.
template <typename S, typename acc_t>
void conv_strip(const TapRows<S>& t, const acc_t* w, int64_t K, int64_t x0, int64_t x1, acc_t* out,
                bool accumulate = false) {
  if constexpr (std::is_same_v<acc_t, float>) {
    if (fixed_path<S, acc_t>(t) && with_fixed_k(K, [&](auto kc) {
          conv_strip_fixed<S, acc_t, decltype(kc)::value>(t, w, x0, x1, out, accumulate);
        })) {
      return;
    }
  }
  conv_strip_generic<S, acc_t>(t, w, K, x0, x1, out, accumulate);
}

// The weight-gradient terms of one channel block from the pixels x0 <= x < x1, added into gw.
template <typename S, typename acc_t>
void weight_grad_strip(const TapRows<S>& t, const acc_t* gd, int64_t K, int64_t x0, int64_t x1, acc_t* gw) {
  if constexpr (std::is_same_v<acc_t, float>) {
    if (fixed_path<S, acc_t>(t) && with_fixed_k(K, [&](auto kc) {
          weight_grad_strip_fixed<S, acc_t, decltype(kc)::value>(t, gd, x0, x1, gw);
        })) {
      return;
    }
  }
  weight_grad_strip_generic<S, acc_t>(t, gd, K, x0, x1, gw);
}

// ---- bf16 dot products (AVX512BF16) ---------------------------------------------------------------------------

#if defined(CPU_CAPABILITY_AVX512BF16)
constexpr bool kHasBf16Dot = true;
#else
constexpr bool kHasBf16Dot = false;
#endif

// The weights of a stage as bf16 pairs of kernel rows for the dot products: [nCB][(K + 1) / 2][K][2 * V] uint16,
// lane c of pair p, tap kx holding (w[2p][kx][c], w[2p + 1][kx][c]) (0 for the row after the last of an odd K).
// Empty when this copy has no dot products or a weight is not exactly a bf16 (then the fp32 loops keep the
// weight's full precision).
std::vector<uint16_t> bf16_row_pairs(const std::vector<float>& wb, int64_t K, const Blocking& bl) {
  if (!kHasBf16Dot) return {};
  uint32_t low = 0;
  for (const float v : wb) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    low |= bits & 0xffffu;
  }
  if (low != 0) return {};
  const int64_t V = bl.V, NP = (K + 1) / 2;
  std::vector<uint16_t> out(static_cast<size_t>(bl.nCB * NP * K * 2 * V), 0);
  auto bf16_bits = [](float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    return static_cast<uint16_t>(bits >> 16);
  };
  for (int64_t cb = 0; cb < bl.nCB; ++cb) {
    for (int64_t p = 0; p < NP; ++p) {
      for (int64_t kx = 0; kx < K; ++kx) {
        uint16_t* dst = out.data() + ((cb * NP + p) * K + kx) * 2 * V;
        for (int64_t c = 0; c < V; ++c) {
          dst[2 * c] = bf16_bits(wb[(cb * K * K + 2 * p * K + kx) * V + c]);
          if (2 * p + 1 < K) dst[2 * c + 1] = bf16_bits(wb[(cb * K * K + (2 * p + 1) * K + kx) * V + c]);
        }
      }
    }
  }
  return out;
}

#if defined(CPU_CAPABILITY_AVX512BF16)
// Pixel ix of row r (zero outside the map or for a null row), its 16 bf16 lanes zero-extended to 32 bits.
__attribute__((always_inline)) inline __m512i load_bf16_wide(const TapRows<c10::BFloat16>& t, const c10::BFloat16* r,
                                                             int64_t ix) {
  const c10::BFloat16* p = r == nullptr ? kZeros<c10::BFloat16> : t.px(r, ix);
  return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// XB outputs from x: per pair of kernel rows, each input pair vector (lane c: pixel of row 2p, pixel of row 2p+1)
// built once and fed with the K weight pairs of the pair into vdpbf16ps.
template <int K, int XB>
__attribute__((always_inline)) inline void dot_block(const TapRows<c10::BFloat16>& t, const uint16_t* wp, int64_t x,
                                                     float* out) {
  constexpr int NP = (K + 1) / 2;
  __m512 acc[XB];
#pragma GCC unroll 16
  for (int j = 0; j < XB; ++j) acc[j] = _mm512_setzero_ps();
  for (int p = 0; p < NP; ++p) {
    const c10::BFloat16* r0 = t.rows[2 * p];
    const c10::BFloat16* r1 = 2 * p + 1 < K ? t.rows[2 * p + 1] : nullptr;
    if (r0 == nullptr && r1 == nullptr) continue;
    __m512i wr[K];
#pragma GCC unroll 16
    for (int kx = 0; kx < K; ++kx) wr[kx] = _mm512_loadu_si512(wp + (p * K + kx) * 32);
    const int64_t ix0 = x - K / 2;
#pragma GCC unroll 32
    for (int i = 0; i < XB + K - 1; ++i) {
      const __m512i pair = _mm512_or_si512(load_bf16_wide(t, r0, ix0 + i),
                                           _mm512_slli_epi32(load_bf16_wide(t, r1, ix0 + i), 16));
#pragma GCC unroll 16
      for (int j = 0; j < XB; ++j) {
        const int kx = i - j;
        if (kx >= 0 && kx < K) acc[j] = _mm512_dpbf16_ps(acc[j], (__m512bh)pair, (__m512bh)wr[kx]);
      }
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < XB; ++j) _mm512_storeu_ps(out + (x + j) * 16, acc[j]);
}

template <int K>
void dot_strip_fixed(const TapRows<c10::BFloat16>& t, const uint16_t* wp, int64_t x0, int64_t x1, float* out) {
  constexpr int XB = kBlock<K>;  // K (<= 15) weight pairs + XB accumulators + 3 temporaries fit the 32 registers
  static_assert(K + XB + 3 <= kVecRegs);
  int64_t x = x0;
  for (; x + XB <= x1; x += XB) dot_block<K, XB>(t, wp, x, out);
  for (; x < x1; ++x) dot_block<K, 1>(t, wp, x, out);
}
#endif

// The correlation of one channel block for the outputs x0 <= x < x1: bf16 dot products where this copy has
// them, the weights are bf16-exact (wp non-null) and the block is full; else conv_strip.
template <typename S, typename acc_t>
void conv_strip_dot(const TapRows<S>& t, const acc_t* w, const uint16_t* wp, int64_t K, int64_t x0, int64_t x1,
                    acc_t* out) {
#if defined(CPU_CAPABILITY_AVX512BF16)
  if constexpr (std::is_same_v<S, c10::BFloat16>) {
    if (wp != nullptr && t.m == 16 &&
        with_fixed_k(K, [&](auto kc) { dot_strip_fixed<decltype(kc)::value>(t, wp, x0, x1, out); })) {
      return;
    }
  }
#endif
  (void)wp;
  conv_strip<S, acc_t>(t, w, K, x0, x1, out);
}

// Output pixels per tile of the row-group loops below: a multiple of the register block, about 32 pixels, so that
// the K input rows of a tile (K x (tile + K - 1) pixels) stay in L1 while every channel block of a group reads them.
int64_t tile_width(int64_t K) {
  int64_t tile = 32;
  with_fixed_k(K, [&](auto kc) {
    constexpr int64_t XB = kBlock<decltype(kc)::value>;
    tile = XB * ((32 + XB - 1) / XB);
  });
  return tile;
}

// ---- gate ------------------------------------------------------------------------------------------------------

template <typename acc_t>
Vectorized<acc_t> sigmoid(const Vectorized<acc_t>& g) {
  using Vec = Vectorized<acc_t>;
  if constexpr (std::is_same_v<acc_t, float>) {
    return Vec(1.0f) / (Vec(1.0f) + g.neg().exp_u20());
  } else {  // fp64 is the exactness path: scalar libm exp
    return g.map([](acc_t v) { return acc_t(1) / (acc_t(1) + std::exp(-v)); });
  }
}

// A row of n pixels of a [.., C] tensor of dtype T: pixel x, channel c is at base[x * step + c].
template <typename T>
struct RowRef {
  T* base;
  int64_t step;
  T* at(int64_t x, int64_t c) const { return base + x * step + c; }
};

// The weights of one stage as the correlation loops take them.
template <typename acc_t>
struct StageWeights {
  std::vector<acc_t> wb;     // blocked [nCB][K * K][V]
  std::vector<uint16_t> wp;  // bf16 row pairs, or empty (bf16_row_pairs)
  int64_t K;
  const uint16_t* pairs(int64_t cb) const {
    return wp.empty() ? nullptr : wp.data() + cb * ((K + 1) / 2) * K * 2 * kVec<acc_t>;
  }
};

template <typename acc_t>
StageWeights<acc_t> stage_weights(const Stage& st, const Blocking& bl) {
  StageWeights<acc_t> sw;
  sw.K = st.K;
  sw.wb = block_weight(static_cast<const acc_t*>(st.weight), st.K, bl, false);
  if constexpr (std::is_same_v<acc_t, float>) sw.wp = bf16_row_pairs(sw.wb, st.K, bl);
  return sw;
}

// Channel blocks of one 64-byte line of a [.., Ci] tensor of dtype S: a row group reads them together, tile by
// tile, so each line of u is fetched once per tile instead of once per block.
template <typename S, typename acc_t>
constexpr int64_t kGroup = std::max<int64_t>(1, 64 / (kVec<acc_t> * static_cast<int64_t>(sizeof(S))));

// The blocks cb0 .. cb0+g-1 of `a` and the matching ones of `g` of row (b, y): their tap rows (rows: 2 * kGroup * K
// scratch pointers) and correlations into da / dg ([g][n][V]), tile by tile.
template <typename S, typename acc_t>
struct RowGroup {
  static constexpr int64_t G = kGroup<S, acc_t>;
  TapRows<S> ta[G], tg[G];
  int64_t cb0, g;
  RowGroup(const BlockMap<S>& in, int64_t b, int64_t y, int64_t cb0_, int64_t K, const S** rows) : cb0(cb0_) {
    const Blocking& bl = *in.bl;
    g = std::min(G, bl.nh - cb0);
    for (int64_t j = 0; j < g; ++j) {
      ta[j] = in.taps(b, y, cb0 + j, K, rows + 2 * j * K);
      tg[j] = in.taps(b, y, cb0 + j + bl.nh, K, rows + (2 * j + 1) * K);
    }
  }
  void conv(const StageWeights<acc_t>& sw, const Blocking& bl, int64_t n, acc_t* da, acc_t* dg) const {
    const int64_t K = sw.K, taps = K * K * bl.V, tile = tile_width(K);
    for (int64_t x0 = 0; x0 < n; x0 += tile) {
      const int64_t x1 = std::min(n, x0 + tile);
      for (int64_t j = 0; j < g; ++j) {
        const int64_t ca = cb0 + j, cg = cb0 + j + bl.nh;
        conv_strip_dot<S, acc_t>(ta[j], sw.wb.data() + ca * taps, sw.pairs(ca), K, x0, x1, da + j * n * bl.V);
        conv_strip_dot<S, acc_t>(tg[j], sw.wb.data() + cg * taps, sw.pairs(cg), K, x0, x1, dg + j * n * bl.V);
      }
    }
  }
};

// Conv + gate of row (b, y) of `in`, a group of channel-block pairs at a time (da, dg: [kGroup][w][V] scratch), z
// stored straight into `z` (Ch channels from channel 0 of every pixel).
template <typename S, typename acc_t, typename T>
void conv_gate_row(const BlockMap<S>& in, int64_t b, int64_t y, const StageWeights<acc_t>& sw, bool sigmoid_gate,
                   acc_t gate_scale, const S** rows, acc_t* da, acc_t* dg, RowRef<T> z) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  const Blocking& bl = *in.bl;
  const Vec gs(gate_scale);
  const int64_t n = in.w;
  for (int64_t cb0 = 0; cb0 < bl.nh; cb0 += kGroup<S, acc_t>) {
    const RowGroup<S, acc_t> grp(in, b, y, cb0, sw.K, rows);
    grp.conv(sw, bl, n, da, dg);
    for (int64_t j = 0; j < grp.g; ++j) {
      const int64_t cb = cb0 + j, m = bl.count(cb);
      for (int64_t x = 0; x < n; ++x) {
        const Vec a = Vec::loadu(da + (j * n + x) * V), g = Vec::loadu(dg + (j * n + x) * V);
        store_px<T, acc_t>(sigmoid_gate ? a * sigmoid<acc_t>(g) : a * g * gs, z.at(x, cb * V), m);
      }
    }
  }
}

// Backward of one row (b, y): recomputes the conv group by group, writes dL/dd into GD (from gz = dL/dz, dtype
// Tg) and adds this row's weight-gradient terms into gw [nCB][K * K][V].
template <typename S, typename acc_t, typename Tg>
void gate_backward_row(const BlockMap<S>& in, int64_t b, int64_t y, const StageWeights<acc_t>& sw,
                       bool sigmoid_gate, acc_t gate_scale, RowRef<const Tg> gz, Plane<acc_t>& GD, acc_t* gw,
                       const S** rows, acc_t* da, acc_t* dg) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  const Blocking& bl = *in.bl;
  const Vec gs(gate_scale), one(acc_t(1));
  const int64_t n = in.w, K = sw.K, taps = K * K * V, tile = tile_width(K);
  for (int64_t cb0 = 0; cb0 < bl.nh; cb0 += kGroup<S, acc_t>) {
    const RowGroup<S, acc_t> grp(in, b, y, cb0, K, rows);
    grp.conv(sw, bl, n, da, dg);
    for (int64_t j = 0; j < grp.g; ++j) {
      const int64_t cb = cb0 + j, m = bl.count(cb);
      acc_t* ga_out = GD.pix(b, y, cb, 0);
      acc_t* gg_out = GD.pix(b, y, cb + bl.nh, 0);
      for (int64_t x = 0; x < n; ++x) {
        const Vec a = Vec::loadu(da + (j * n + x) * V), g = Vec::loadu(dg + (j * n + x) * V);
        const Vec go = load_px<Tg, acc_t>(gz.at(x, cb * V), m);  // lanes >= m read as 0
        Vec ga, gg;
        if (sigmoid_gate) {
          const Vec s = sigmoid<acc_t>(g);
          ga = go * s;
          gg = go * a * s * (one - s);
        } else {
          ga = go * g * gs;
          gg = go * a * gs;
        }
        ga.store(ga_out + x * V);
        gg.store(gg_out + x * V);
      }
    }
    for (int64_t x0 = 0; x0 < n; x0 += tile) {
      const int64_t x1 = std::min(n, x0 + tile);
      for (int64_t j = 0; j < grp.g; ++j) {
        const int64_t ca = cb0 + j, cg = cb0 + j + bl.nh;
        weight_grad_strip<S, acc_t>(grp.ta[j], GD.pix(b, y, ca, 0), K, x0, x1, gw + ca * taps);
        weight_grad_strip<S, acc_t>(grp.tg[j], GD.pix(b, y, cg, 0), K, x0, x1, gw + cg * taps);
      }
    }
  }
}

// ---- pooling -------------------------------------------------------------------------------------------------------

// Adaptive average pooling of the map `in` (full res, read in its own dtype) into plane Pl (pooled res), one pooled
// row per task.
template <typename S, typename acc_t>
void pool_plane(const BlockMap<S>& in, Plane<acc_t>& Pl) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  const int64_t H = in.h, W = in.w, h = Pl.h, w = Pl.w;
  at::parallel_for(0, Pl.B * h, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> colsum(static_cast<size_t>(W * V));
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / h, oy = r % h;
      const int64_t y0 = window_start(oy, H, h), y1 = window_end(oy, H, h);
      for (int64_t cb = 0; cb < Pl.nCB; ++cb) {
        const int64_t m = in.lanes(cb);
        std::fill(colsum.begin(), colsum.end(), acc_t(0));
        for (int64_t y = y0; y < y1; ++y) {
          const S* src = in.row(b, y, cb);
          for (int64_t x = 0; x < W; ++x) {
            (Vec::loadu(colsum.data() + x * V) + load_px<S, acc_t>(src + x * in.sW, m)).store(colsum.data() + x * V);
          }
        }
        acc_t* dst = Pl.pix(b, oy, cb, 0);
        for (int64_t ox = 0; ox < w; ++ox) {
          const int64_t x0 = window_start(ox, W, w), x1 = window_end(ox, W, w);
          Vec s(acc_t(0));
          for (int64_t x = x0; x < x1; ++x) s = s + Vec::loadu(colsum.data() + x * V);
          (s * Vec(acc_t(1) / static_cast<acc_t>((y1 - y0) * (x1 - x0)))).store(dst + ox * V);
        }
      }
    }
  });
}

// ---- forward -----------------------------------------------------------------------------------------------------

template <typename T, typename acc_t>
void forward_impl(const PyramidArgs& a) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  const int64_t B = a.u.B, H = a.u.H, W = a.u.W;
  const Blocking bl(a.u.C, V);
  const int64_t Ch = bl.Ch;
  const acc_t gs = static_cast<acc_t>(a.gate_scale);
  T* out = static_cast<T*>(a.out.data);
  const BlockMap<T> U = tensor_map<T>(a.u, bl);

  for (int64_t i = 0; i < a.num_stages; ++i) {
    const Stage& st = a.stages[i];
    const int64_t K = st.K;
    const StageWeights<acc_t> sw = stage_weights<acc_t>(st, bl);
    const int64_t off = i * Ch;  // this stage's channel slice of the concat output
    if (st.scale == 1.0) {
      // Conv + gate at full resolution, from u as it lies, straight into the slice.
      at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
        std::vector<const T*> rows(2 * kGroup<T, acc_t> * K);
        std::vector<acc_t> da(static_cast<size_t>(kGroup<T, acc_t> * W * V)), dg(da.size());
        for (int64_t r = begin; r < end; ++r) {
          const int64_t b = r / H, y = r % H;
          const RowRef<T> o{out + b * a.out.sB + y * a.out.sH + off, a.out.sW};
          conv_gate_row<T, acc_t, T>(U, b, y, sw, a.sigmoid_gate, gs, rows.data(), da.data(), dg.data(), o);
        }
      });
      continue;
    }
    // Pool into a small plane, conv + gate at low resolution, then upsample into the slice.
    const int64_t h = pooled_size(H, st.scale), w = pooled_size(W, st.scale);
    Plane<acc_t> Pl(B, h, w, bl, false);
    pool_plane<T, acc_t>(U, Pl);
    const BlockMap<acc_t> PM = Pl.map(bl);
    // Gated low-res maps [B*h][w][Ch], every element written by conv_gate_row (no zero-fill).
    const std::unique_ptr<acc_t[]> Z(new acc_t[static_cast<size_t>(std::max<int64_t>(1, B * h * w * Ch))]);
    at::parallel_for(0, B * h, 1, [&](int64_t begin, int64_t end) {
      std::vector<const acc_t*> rows(2 * kGroup<acc_t, acc_t> * K);
      std::vector<acc_t> da(static_cast<size_t>(kGroup<acc_t, acc_t> * w * V)), dg(da.size());
      for (int64_t r = begin; r < end; ++r) {
        const RowRef<acc_t> z{Z.get() + r * w * Ch, Ch};
        conv_gate_row<acc_t, acc_t, acc_t>(PM, r / h, r % h, sw, a.sigmoid_gate, gs, rows.data(), da.data(),
                                           dg.data(), z);
      }
    });
    std::vector<BilinearTap> tx(static_cast<size_t>(W));
    for (int64_t x = 0; x < W; ++x) tx[x] = bilinear_tap(x, w, W);
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> blend(static_cast<size_t>(w * Ch));
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / H, y = r % H;
        const BilinearTap ty = bilinear_tap(y, h, H);
        const acc_t ly = static_cast<acc_t>(ty.lam);
        const Vec vly(ly), vmy(acc_t(1) - ly);
        const acc_t* z0 = Z.get() + (b * h + ty.i0) * w * Ch;
        const acc_t* z1 = Z.get() + (b * h + ty.i1) * w * Ch;
        for (int64_t c = 0; c < w * Ch; c += V) {  // rows first, like the reference
          const int64_t m = std::min<int64_t>(V, w * Ch - c);
          (Vec::loadu(z0 + c, m) * vmy + Vec::loadu(z1 + c, m) * vly).store(blend.data() + c, m);
        }
        T* o = out + b * a.out.sB + y * a.out.sH + off;
        for (int64_t x = 0; x < W; ++x) {
          const acc_t lx = static_cast<acc_t>(tx[x].lam);
          const Vec vlx(lx), vmx(acc_t(1) - lx);
          const acc_t* b0 = blend.data() + tx[x].i0 * Ch;
          const acc_t* b1 = blend.data() + tx[x].i1 * Ch;
          for (int64_t c = 0; c < Ch; c += V) {
            const int64_t m = std::min<int64_t>(V, Ch - c);
            store_px<T, acc_t>(Vec::loadu(b0 + c, m) * vmx + Vec::loadu(b1 + c, m) * vlx, o + x * a.out.sW + c, m);
          }
        }
      }
    });
  }
}

// ---- backward ----------------------------------------------------------------------------------------------------

// dL/dz at the pooled resolution: the adjoint of the bilinear upsample, gathered per low-res row so that
// each output row is owned by one task (deterministic, no atomics).
template <typename T, typename acc_t>
void upsample_backward(const View4& g, int64_t off, int64_t Ch, int64_t h, int64_t w, std::vector<acc_t>& GZ) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  const int64_t B = g.B, H = g.H, W = g.W;
  std::vector<BilinearTap> tx(static_cast<size_t>(W)), ty(static_cast<size_t>(H));
  for (int64_t x = 0; x < W; ++x) tx[x] = bilinear_tap(x, w, W);
  for (int64_t y = 0; y < H; ++y) ty[y] = bilinear_tap(y, h, H);
  at::parallel_for(0, B * h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / h, oy = r % h;
      acc_t* dst = GZ.data() + r * w * Ch;
      std::fill(dst, dst + w * Ch, acc_t(0));
      for (int64_t y = 0; y < H; ++y) {
        if (ty[y].i0 != oy && ty[y].i1 != oy) continue;
        const acc_t ly = static_cast<acc_t>(ty[y].lam);
        acc_t wy = 0;
        if (ty[y].i0 == oy) wy += acc_t(1) - ly;
        if (ty[y].i1 == oy) wy += ly;
        const T* src = static_cast<const T*>(g.data) + b * g.sB + y * g.sH + off;
        for (int64_t x = 0; x < W; ++x) {
          const acc_t lx = static_cast<acc_t>(tx[x].lam);
          const Vec w0(wy * (acc_t(1) - lx)), w1(wy * lx);
          acc_t* d0 = dst + tx[x].i0 * Ch;
          acc_t* d1 = dst + tx[x].i1 * Ch;
          for (int64_t c = 0; c < Ch; c += V) {
            const int64_t m = std::min<int64_t>(V, Ch - c);
            const Vec gv = load_px<T, acc_t>(src + x * g.sW + c, m);
            (Vec::loadu(d0 + c, m) + gv * w0).store(d0 + c, m);
            (Vec::loadu(d1 + c, m) + gv * w1).store(d1 + c, m);
          }
        }
      }
    }
  });
}

// GU (full res) += adjoint of the adaptive pooling of gP; one full-res row per task.
template <typename acc_t>
void pool_backward(Plane<acc_t>& gP, Plane<acc_t>& GU) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  const int64_t B = gP.B, h = gP.h, w = gP.w, H = GU.h, W = GU.w;
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> rowsum(static_cast<size_t>(w * V));
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / H, y = r % H;
      for (int64_t cb = 0; cb < gP.nCB; ++cb) {
        std::fill(rowsum.begin(), rowsum.end(), acc_t(0));
        for (int64_t oy = 0; oy < h; ++oy) {
          const int64_t y0 = window_start(oy, H, h), y1 = window_end(oy, H, h);
          if (y < y0 || y >= y1) continue;
          const Vec inv(acc_t(1) / static_cast<acc_t>(y1 - y0));
          const acc_t* src = gP.pix(b, oy, cb, 0);
          for (int64_t i = 0; i < w * V; i += V) {
            (Vec::loadu(rowsum.data() + i) + Vec::loadu(src + i) * inv).store(rowsum.data() + i);
          }
        }
        acc_t* dst = GU.pix(b, y, cb, 0);
        for (int64_t ox = 0; ox < w; ++ox) {
          const int64_t x0 = window_start(ox, W, w), x1 = window_end(ox, W, w);
          const Vec v = Vec::loadu(rowsum.data() + ox * V) * Vec(acc_t(1) / static_cast<acc_t>(x1 - x0));
          for (int64_t x = x0; x < x1; ++x) (Vec::loadu(dst + x * V) + v).store(dst + x * V);
        }
      }
    }
  });
}

// dL/dd of one stage into GD and dL/dw into gwt ([K, K, Ci]), recomputing the conv of the stage input `in` (u as
// it lies at full resolution, the pooled plane otherwise) pair by pair of channel blocks, with dL/dw from the
// same rows while they are in cache. dL/dw goes into one partial sum per part of a fixed partition of the rows,
// added in part order: the same for any thread count. `gz_row(r)` is the RowRef of dL/dz for row r.
template <typename S, typename acc_t, typename Tg, typename GzRow>
void gate_backward(const BlockMap<S>& in, const StageWeights<acc_t>& sw, bool sigmoid_gate, acc_t gs, GzRow gz_row,
                   Plane<acc_t>& GD, acc_t* gwt) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  const Blocking& bl = *in.bl;
  const int64_t K = sw.K, h = in.h, w = in.w, nCB = bl.nCB;
  const int64_t rows_total = GD.B * h, nparts = std::min<int64_t>(rows_total, 16), wsize = nCB * K * K * V;
  std::vector<acc_t> partial(static_cast<size_t>(nparts * wsize), acc_t(0));
  at::parallel_for(0, nparts, 1, [&](int64_t begin, int64_t end) {
    std::vector<const S*> rows(2 * kGroup<S, acc_t> * K);
    std::vector<acc_t> da(static_cast<size_t>(kGroup<S, acc_t> * w * V)), dg(da.size());
    for (int64_t part = begin; part < end; ++part) {
      acc_t* gw = partial.data() + part * wsize;
      for (int64_t r = part * rows_total / nparts; r < (part + 1) * rows_total / nparts; ++r) {
        const RowRef<const Tg> gz = gz_row(r);
        gate_backward_row<S, acc_t, Tg>(in, r / h, r % h, sw, sigmoid_gate, gs, gz, GD, gw, rows.data(), da.data(),
                                        dg.data());
      }
    }
  });
  for (int64_t part = 1; part < nparts; ++part) {  // fixed order
    for (int64_t j = 0; j < wsize; j += V) {
      (Vec::loadu(partial.data() + j) + Vec::loadu(partial.data() + part * wsize + j)).store(partial.data() + j);
    }
  }
  for (int64_t cb = 0; cb < nCB; ++cb) {
    for (int64_t t = 0; t < K * K; ++t) {
      std::memcpy(gwt + t * bl.Ci + bl.first(cb), partial.data() + (cb * K * K + t) * V, sizeof(acc_t) * bl.count(cb));
    }
  }
}

template <typename T, typename acc_t>
void backward_impl(const PyramidArgs& a) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  const View4& g = a.out;
  const int64_t B = a.u.B, H = a.u.H, W = a.u.W;
  const Blocking bl(a.u.C, V);
  const int64_t Ch = bl.Ch, nCB = bl.nCB;
  const acc_t gs = static_cast<acc_t>(a.gate_scale);
  const BlockMap<T> U = tensor_map<T>(a.u, bl);
  Plane<acc_t> GU(B, H, W, bl, true);  // dL/du, accumulated over the stages in the compute dtype

  for (int64_t i = 0; i < a.num_stages; ++i) {
    const Stage& st = a.stages[i];
    const int64_t K = st.K, off = i * Ch;
    const bool full = st.scale == 1.0;
    const int64_t h = full ? H : pooled_size(H, st.scale), w = full ? W : pooled_size(W, st.scale);
    const StageWeights<acc_t> sw = stage_weights<acc_t>(st, bl);
    const std::vector<acc_t> wf = block_weight(static_cast<const acc_t*>(st.weight), K, bl, true);
    acc_t* gwt = static_cast<acc_t*>(st.grad_weight);

    // dL/dd (the conv output), channel-blocked, every lane written by gate_backward_row.
    Plane<acc_t> GD(B, h, w, bl, false);
    if (full) {  // the stage input is u as it lies, dL/dz is grad_out's slice
      const T* go = static_cast<const T*>(g.data);
      auto gz_row = [&](int64_t r) { return RowRef<const T>{go + (r / H) * g.sB + (r % H) * g.sH + off, g.sW}; };
      gate_backward<T, acc_t, T>(U, sw, a.sigmoid_gate, gs, gz_row, GD, gwt);
    } else {  // the pooled plane is recomputed (never stored by the forward), dL/dz gathered at its resolution
      Plane<acc_t> pooled(B, h, w, bl, false);
      pool_plane<T, acc_t>(U, pooled);
      std::vector<acc_t> GZ(static_cast<size_t>(B * h * w * Ch));
      upsample_backward<T, acc_t>(g, off, Ch, h, w, GZ);
      auto gz_row = [&](int64_t r) { return RowRef<const acc_t>{GZ.data() + r * w * Ch, Ch}; };
      gate_backward<acc_t, acc_t, acc_t>(pooled.map(bl), sw, a.sigmoid_gate, gs, gz_row, GD, gwt);
    }

    // dL/d(stage input) = correlation of dL/dd with the flipped kernel, added into GU (or gP, then pooled back).
    Plane<acc_t> gP(full ? 0 : B, h, w, bl, true);
    Plane<acc_t>& gin = full ? GU : gP;
    const BlockMap<acc_t> GDM = GD.map(bl);
    at::parallel_for(0, B * h, 1, [&](int64_t begin, int64_t end) {
      std::vector<const acc_t*> rows(K);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / h, y = r % h;
        for (int64_t cb = 0; cb < nCB; ++cb) {
          conv_strip<acc_t, acc_t>(GDM.taps(b, y, cb, K, rows.data()), wf.data() + cb * K * K * V, K, 0, w,
                                   gin.pix(b, y, cb, 0), true);
        }
      }
    });
    if (!full) pool_backward<acc_t>(gP, GU);
  }

  // Round grad_u once to the input dtype.
  T* gu = static_cast<T*>(a.grad_u.data);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / H, y = r % H;
      T* dst = gu + b * a.grad_u.sB + y * a.grad_u.sH;
      for (int64_t cb = 0; cb < nCB; ++cb) {
        const acc_t* src = GU.pix(b, y, cb, 0);
        const int64_t c0 = bl.first(cb), m = bl.count(cb);
        for (int64_t x = 0; x < W; ++x) store_px<T, acc_t>(Vec::loadu(src + x * V), dst + x * a.grad_u.sW + c0, m);
      }
    }
  });
}

// ---- pooled-bias mean --------------------------------------------------------------------------------------------

// Sums rows in a fixed partition of each sample's H*W pixels (each part read sequentially, all channels at
// once), then adds the parts in order: deterministic for any thread count.
template <typename T, typename acc_t>
void mean_impl(const View4& x, acc_t* mean) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  const int64_t C = x.C, Cp = round_up(C, V), nparts = std::min<int64_t>(x.H, 16);
  std::vector<acc_t> partial(static_cast<size_t>(x.B * nparts * Cp), acc_t(0));
  at::parallel_for(0, x.B * nparts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / nparts, part = t % nparts;
      const int64_t y0 = part * x.H / nparts, y1 = (part + 1) * x.H / nparts;
      acc_t* sum = partial.data() + t * Cp;
      for (int64_t y = y0; y < y1; ++y) {
        for (int64_t i = 0; i < x.W; ++i) {
          const T* px = static_cast<const T*>(x.data) + b * x.sB + y * x.sH + i * x.sW;
          for (int64_t c = 0; c < C; c += V) {
            (Vec::loadu(sum + c) + load_px<T, acc_t>(px + c, std::min<int64_t>(V, C - c))).store(sum + c);
          }
        }
      }
    }
  });
  const acc_t inv = acc_t(1) / static_cast<acc_t>(x.H * x.W);
  for (int64_t b = 0; b < x.B; ++b) {
    for (int64_t c = 0; c < C; ++c) {
      acc_t total = 0;
      for (int64_t part = 0; part < nparts; ++part) total += partial[(b * nparts + part) * Cp + c];
      mean[b * C + c] = total * inv;
    }
  }
}

template <typename F>
void dispatch(DType dt, F&& f) {
  switch (dt) {
    case DType::f32: f(float{}, float{}); break;
    case DType::f16: f(c10::Half{}, float{}); break;
    case DType::bf16: f(c10::BFloat16{}, float{}); break;
    case DType::f64: f(double{}, double{}); break;
  }
}

}  // namespace

void pyramid_forward(const PyramidArgs& args) {
  dispatch(args.dtype, [&](auto t, auto acc) { forward_impl<decltype(t), decltype(acc)>(args); });
}

void pyramid_backward(const PyramidArgs& args) {
  dispatch(args.dtype, [&](auto t, auto acc) { backward_impl<decltype(t), decltype(acc)>(args); });
}

void spatial_mean(DType dtype, const View4& x, void* mean) {
  dispatch(dtype, [&](auto t, auto acc) {
    using acc_t = decltype(acc);
    mean_impl<decltype(t), acc_t>(x, static_cast<acc_t*>(mean));
  });
}

DELTACONV_REGISTER_CPU_KERNELS(&pyramid_forward, &pyramid_backward, &spatial_mean);

}  // namespace deltaconv::cpu::CPU_CAPABILITY
