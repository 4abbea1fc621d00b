// CPU kernels of the fused pyramid stage and the pooled-bias mean (docs/DESIGN.md §2), channels-last.
//
// Layout of the work: every internal buffer is fp32 (fp64 for fp64 tensors) with the channel count padded
// to a multiple of the vector width (`Cp`, zero-filled), and spatial rows padded with `P` zero pixels on
// both sides, so the K x K inner loops have no branches and no channel tails. Channels are innermost and
// vectorised with at::vec; rows are spread over threads with at::parallel_for. Every output element (and
// every partial sum of a weight gradient) is written by exactly one task in a fixed order, so results do
// not depend on the thread count.
//
// The K x K loops are register-blocked (docs/DESIGN.md §2): XB output pixels along W times one vector of channels per
// inner block, the K taps of a kernel row held in registers, and each input vector of a row loaded once and used
// for every tap it meets (XB + K - 1 loads for XB * K FMAs). K is a template parameter for the kernel sizes that
// fit the register file; other K take a generic loop.
//
// This is the one vectorised translation unit, compiled once per instruction set of csrc/cpu/isa.def (the
// build passes that ISA's -m flags and at::vec's CPU_CAPABILITY macros); each copy lives in namespace
// deltaconv::cpu::<ISA> and ends with its table of entry points, and csrc/cpu/capability.cpp picks one per call.

#if !defined(CPU_CAPABILITY)
#error "compile csrc/cpu/kernels.cpp once per ISA of csrc/cpu/isa.def, with -DCPU_CAPABILITY=<ISA> (setup.py and CMake do)"
#endif

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

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

// ---- dtype conversion of one row of `n` channels --------------------------------------------------------

template <typename T, typename acc_t>
void load_row(const T* src, acc_t* dst, int64_t n) {
  if constexpr (std::is_same_v<T, acc_t>) {  // rows are short (often one vector): no libc call
    using Vec = Vectorized<acc_t>;
    constexpr int64_t V = kVec<acc_t>;
    int64_t c = 0;
    for (; c + V <= n; c += V) Vec::loadu(src + c).store(dst + c);
    if (c < n) Vec::loadu(src + c, n - c).store(dst + c, n - c);
  } else if constexpr (std::is_same_v<acc_t, float> &&
                       (std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>)) {
    constexpr int64_t V = kVec<float>;
    int64_t c = 0;
    for (; c + V <= n; c += V) {
      Vectorized<float> v;
      if constexpr (std::is_same_v<T, c10::BFloat16>) {
        at::vec::load_fp32_from_bf16(src + c, v);
      } else {
        at::vec::load_fp32_from_fp16(src + c, v);
      }
      v.store(dst + c);
    }
    for (; c < n; ++c) dst[c] = static_cast<float>(src[c]);
  } else {
    for (int64_t c = 0; c < n; ++c) dst[c] = static_cast<acc_t>(src[c]);
  }
}

// Rounds once to the storage dtype (round-to-nearest-even).
template <typename T, typename acc_t>
void store_row(const acc_t* src, T* dst, int64_t n) {
  if constexpr (std::is_same_v<T, acc_t>) {
    std::memcpy(dst, src, sizeof(T) * n);
  } else {
    at::vec::convert(src, dst, n);
  }
}

// ---- channel blocking ----------------------------------------------------------------------------------------
//
// Internal maps are channel-blocked: a row of a [B, h, w, Ci] map is stored as nCB strips of (w + 2P) pixels x
// V lanes, so the K x K loops over one block stream through contiguous memory. Each half of the channels (a and
// g of the gate) is padded to whole blocks on its own, so block j of `a` and block j of `g` line up lane by lane.

struct Blocking {
  int64_t Ci, Ch, V, nh, nCB;
  Blocking(int64_t Ci_, int64_t V_) : Ci(Ci_), Ch(Ci_ / 2), V(V_), nh((Ci_ / 2 + V_ - 1) / V_), nCB(2 * nh) {}
  // First channel of block cb in the [.., Ci] tensor layout, and how many real lanes it holds.
  int64_t first(int64_t cb) const { return cb < nh ? cb * V : Ch + (cb - nh) * V; }
  int64_t count(int64_t cb) const { return std::min<int64_t>(V, Ch - (cb < nh ? cb : cb - nh) * V); }
};

// A [B, h, w, Ci] compute-dtype map, channel-blocked, with P zero pixels left and right of every strip.
// `zero_all` zero-fills it (for accumulators); otherwise only the padding pixels are zeroed and the writer
// must write every lane of every pixel (zeroing the filler lanes of a partial block).
template <typename acc_t>
struct Plane {
  int64_t B, h, w, nCB, P, V;
  std::unique_ptr<acc_t[]> buf;
  acc_t* data;
  Plane(int64_t B_, int64_t h_, int64_t w_, const Blocking& bl, int64_t P_, bool zero_all)
      : B(B_), h(h_), w(w_), nCB(bl.nCB), P(P_), V(bl.V),
        buf(new acc_t[static_cast<size_t>(std::max<int64_t>(1, B_ * h_ * bl.nCB * (w_ + 2 * P_) * bl.V))]),
        data(buf.get()) {
    const int64_t strips = B * h * nCB, len = (w + 2 * P) * V;
    at::parallel_for(0, strips, 64, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        acc_t* st = data + i * len;
        if (zero_all) {
          std::fill(st, st + len, acc_t(0));
        } else {
          std::fill(st, st + P * V, acc_t(0));
          std::fill(st + (P + w) * V, st + len, acc_t(0));
        }
      }
    });
  }
  acc_t* strip(int64_t b, int64_t y, int64_t cb) { return data + ((b * h + y) * nCB + cb) * (w + 2 * P) * V; }
  acc_t* pix(int64_t b, int64_t y, int64_t cb, int64_t x) { return strip(b, y, cb) + (P + x) * V; }
  // Row pointers of block cb for a K x K correlation centred on row y (nullptr outside the map), each shifted
  // so that index (x + kx) * V addresses pixel x + kx - K/2.
  void tap_rows(int64_t b, int64_t y, int64_t cb, int64_t K, const acc_t** rows) {
    const int64_t half = K / 2;
    for (int64_t ky = 0; ky < K; ++ky) {
      const int64_t iy = y + ky - half;
      rows[ky] = (iy < 0 || iy >= h) ? nullptr : strip(b, iy, cb) + (P - half) * V;
    }
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
#else
constexpr int kVecRegs = 16;
#endif
constexpr int kXB = kVecRegs >= 32 ? 8 : 4;  // output pixels (or taps) per register block
constexpr int kMaxFixedK = 15;               // largest K with a register-blocked specialisation

// A fixed K fits when its K weight (or accumulator) vectors, the XB block and one input vector fit in registers.
template <int K>
constexpr bool kFits = K + kXB + 2 <= kVecRegs;

template <typename acc_t>
void store_or_add(const Vectorized<acc_t>& v, acc_t* dst, bool accumulate) {
  (accumulate ? Vectorized<acc_t>::loadu(dst) + v : v).store(dst);
}

// out[x] (+)= sum_{ky, kx < K} rows[ky][x + kx] * w[ky * K + kx]   (vectors of V lanes), for x < n.
// rows[ky] == nullptr is a zero row (vertical padding); horizontal padding is in the strips themselves.
template <typename acc_t>
void conv_strip_generic(const acc_t* const* rows, const acc_t* w, int64_t K, int64_t x0, int64_t n, acc_t* out,
                        bool accumulate) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  for (int64_t x = x0; x < n; ++x) {
    Vec acc(acc_t(0));
    for (int64_t ky = 0; ky < K; ++ky) {
      if (rows[ky] == nullptr) continue;
      for (int64_t kx = 0; kx < K; ++kx) {
        acc = at::vec::fmadd(Vec::loadu(rows[ky] + (x + kx) * V), Vec::loadu(w + (ky * K + kx) * V), acc);
      }
    }
    store_or_add(acc, out + x * V, accumulate);
  }
}

// The register-blocked correlation for a compile-time K: per block of XB outputs and kernel row ky, the K
// weights are loaded once, then every input vector of the row once, each feeding the (up to) XB outputs it
// touches.
template <typename acc_t, int K>
void conv_strip_fixed(const acc_t* const* rows, const acc_t* w, int64_t n, acc_t* out, bool accumulate) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  constexpr int XB = kXB;
  int64_t x = 0;
  for (; x + XB <= n; x += XB) {
    Vec acc[XB];
#pragma GCC unroll 16
    for (int j = 0; j < XB; ++j) acc[j] = Vec(acc_t(0));
    for (int ky = 0; ky < K; ++ky) {
      if (rows[ky] == nullptr) continue;
      Vec wr[K];
#pragma GCC unroll 16
      for (int kx = 0; kx < K; ++kx) wr[kx] = Vec::loadu(w + (ky * K + kx) * V);
      const acc_t* r = rows[ky] + x * V;
#pragma GCC unroll 32
      for (int i = 0; i < XB + K - 1; ++i) {
        const Vec in = Vec::loadu(r + i * V);
#pragma GCC unroll 16
        for (int j = 0; j < XB; ++j) {
          const int kx = i - j;
          if (kx >= 0 && kx < K) acc[j] = at::vec::fmadd(in, wr[kx], acc[j]);
        }
      }
    }
#pragma GCC unroll 16
    for (int j = 0; j < XB; ++j) store_or_add(acc[j], out + (x + j) * V, accumulate);
  }
  conv_strip_generic<acc_t>(rows, w, K, x, n, out, accumulate);
}

// gw[ky * K + kx] += sum_{x < n} gd[x] * rows[ky][x + kx]   (vectors of V lanes)
template <typename acc_t>
void weight_grad_strip_generic(const acc_t* const* rows, const acc_t* gd, int64_t K, int64_t n, acc_t* gw) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  for (int64_t ky = 0; ky < K; ++ky) {
    if (rows[ky] == nullptr) continue;
    for (int64_t kx = 0; kx < K; ++kx) {
      Vec acc(acc_t(0));
      for (int64_t x = 0; x < n; ++x) {
        acc = at::vec::fmadd(Vec::loadu(gd + x * V), Vec::loadu(rows[ky] + (x + kx) * V), acc);
      }
      store_or_add(acc, gw + (ky * K + kx) * V, true);
    }
  }
}

// The same for a compile-time K: the K tap accumulators of a kernel row stay in registers; per block of XB
// pixels the XB gradient vectors are loaded once, then every input vector once.
template <typename acc_t, int K>
void weight_grad_strip_fixed(const acc_t* const* rows, const acc_t* gd, int64_t n, acc_t* gw) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  constexpr int XB = kXB;
  for (int ky = 0; ky < K; ++ky) {
    if (rows[ky] == nullptr) continue;
    const acc_t* r = rows[ky];
    Vec acc[K];
#pragma GCC unroll 16
    for (int kx = 0; kx < K; ++kx) acc[kx] = Vec(acc_t(0));
    int64_t x = 0;
    for (; x + XB <= n; x += XB) {
      Vec g[XB];
#pragma GCC unroll 16
      for (int j = 0; j < XB; ++j) g[j] = Vec::loadu(gd + (x + j) * V);
#pragma GCC unroll 32
      for (int i = 0; i < XB + K - 1; ++i) {
        const Vec in = Vec::loadu(r + (x + i) * V);
#pragma GCC unroll 16
        for (int j = 0; j < XB; ++j) {
          const int kx = i - j;
          if (kx >= 0 && kx < K) acc[kx] = at::vec::fmadd(g[j], in, acc[kx]);
        }
      }
    }
    for (; x < n; ++x) {
      const Vec g = Vec::loadu(gd + x * V);
#pragma GCC unroll 16
      for (int kx = 0; kx < K; ++kx) acc[kx] = at::vec::fmadd(g, Vec::loadu(r + (x + kx) * V), acc[kx]);
    }
#pragma GCC unroll 16
    for (int kx = 0; kx < K; ++kx) store_or_add(acc[kx], gw + (ky * K + kx) * V, true);
  }
}

// Calls f(std::integral_constant<int, K>) when K is odd, <= kMaxFixedK and fits the registers; else returns false.
template <typename F>
bool with_fixed_k(int64_t K, F&& f) {
  bool done = false;
  auto try_k = [&](auto kc) {
    constexpr int k = decltype(kc)::value;
    if constexpr (kFits<k>) {
      if (K == k) {
        f(kc);
        done = true;
      }
    }
  };
  [&]<int... I>(std::integer_sequence<int, I...>) {
    (try_k(std::integral_constant<int, 2 * I + 1>{}), ...);
  }(std::make_integer_sequence<int, (kMaxFixedK + 1) / 2>{});
  return done;
}

template <typename acc_t>
void conv_strip(const acc_t* const* rows, const acc_t* w, int64_t K, int64_t n, acc_t* out, bool accumulate = false) {
  if (!with_fixed_k(K, [&](auto kc) { conv_strip_fixed<acc_t, decltype(kc)::value>(rows, w, n, out, accumulate); })) {
    conv_strip_generic<acc_t>(rows, w, K, 0, n, out, accumulate);
  }
}

template <typename acc_t>
void weight_grad_strip(const acc_t* const* rows, const acc_t* gd, int64_t K, int64_t n, acc_t* gw) {
  if (!with_fixed_k(K, [&](auto kc) { weight_grad_strip_fixed<acc_t, decltype(kc)::value>(rows, gd, n, gw); })) {
    weight_grad_strip_generic<acc_t>(rows, gd, K, n, gw);
  }
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

// One vector of `m` lanes (the rest zero) from / to storage dtype T.
template <typename T, typename acc_t>
Vectorized<acc_t> load_vec(const T* src, int64_t m) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  if constexpr (std::is_same_v<T, acc_t>) {
    return m == V ? Vec::loadu(src) : Vec::loadu(src, m);
  } else {
    acc_t tmp[V] = {};
    load_row<T, acc_t>(src, tmp, m);
    return Vec::loadu(tmp);
  }
}

template <typename T, typename acc_t>
void store_vec(const Vectorized<acc_t>& v, T* dst, int64_t m) {
  constexpr int64_t V = kVec<acc_t>;
  if constexpr (std::is_same_v<T, acc_t>) {
    if (m == V) {
      v.store(dst);
    } else {
      v.store(dst, m);
    }
  } else if constexpr (std::is_same_v<acc_t, float> &&
                       (std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>)) {
    at::vec::convert_from_float<T>(v, v).store(dst, m);  // rounds to nearest even, like store_row
  } else {
    acc_t tmp[V];
    v.store(tmp);
    store_row<T, acc_t>(tmp, dst, m);
  }
}

// A row of n pixels of a [.., C] tensor of dtype T: pixel x, channel c is at base[x * step + c].
template <typename T>
struct RowRef {
  T* base;
  int64_t step;
  T* at(int64_t x, int64_t c) const { return base + x * step + c; }
};

// The conv of channel blocks cb (`a`) and cb + nh (`g`) of row (b, y) of `in`, into da / dg [n][V].
template <typename acc_t>
void conv_pair(Plane<acc_t>& in, int64_t b, int64_t y, int64_t cb, const Blocking& bl, const acc_t* wb, int64_t K,
               const acc_t** rows, acc_t* da, acc_t* dg) {
  const int64_t taps = K * K * bl.V;
  in.tap_rows(b, y, cb, K, rows);
  conv_strip<acc_t>(rows, wb + cb * taps, K, in.w, da);
  in.tap_rows(b, y, cb + bl.nh, K, rows);
  conv_strip<acc_t>(rows, wb + (cb + bl.nh) * taps, K, in.w, dg);
}

// Conv + gate of row (b, y) of `in`, one pair of channel blocks at a time (da, dg: [w][V] scratch), z stored
// straight into `z` (Ch channels from channel 0 of every pixel).
template <typename acc_t, typename T>
void conv_gate_row(Plane<acc_t>& in, int64_t b, int64_t y, const Blocking& bl, const acc_t* wb, int64_t K,
                   bool sigmoid_gate, acc_t gate_scale, const acc_t** rows, acc_t* da, acc_t* dg, RowRef<T> z) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  const Vec gs(gate_scale);
  for (int64_t cb = 0; cb < bl.nh; ++cb) {
    conv_pair<acc_t>(in, b, y, cb, bl, wb, K, rows, da, dg);
    const int64_t m = bl.count(cb);
    for (int64_t x = 0; x < in.w; ++x) {
      const Vec a = Vec::loadu(da + x * V), g = Vec::loadu(dg + x * V);
      store_vec<T, acc_t>(sigmoid_gate ? a * sigmoid<acc_t>(g) : a * g * gs, z.at(x, cb * V), m);
    }
  }
}

// Backward of one row (b, y): recomputes the conv pair by pair, writes dL/dd into GD (from gz = dL/dz, dtype Tg)
// and adds this row's weight-gradient terms into gw [nCB][K * K][V].
template <typename acc_t, typename Tg>
void gate_backward_row(Plane<acc_t>& in, int64_t b, int64_t y, const Blocking& bl, const acc_t* wb, int64_t K,
                       bool sigmoid_gate, acc_t gate_scale, RowRef<const Tg> gz, Plane<acc_t>& GD, acc_t* gw,
                       const acc_t** rows, acc_t* da, acc_t* dg) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  const Vec gs(gate_scale), one(acc_t(1));
  const int64_t n = in.w, taps = K * K * V;
  for (int64_t cb = 0; cb < bl.nh; ++cb) {
    conv_pair<acc_t>(in, b, y, cb, bl, wb, K, rows, da, dg);
    acc_t* ga_out = GD.pix(b, y, cb, 0);
    acc_t* gg_out = GD.pix(b, y, cb + bl.nh, 0);
    const int64_t m = bl.count(cb);
    for (int64_t x = 0; x < n; ++x) {
      const Vec a = Vec::loadu(da + x * V), g = Vec::loadu(dg + x * V);
      const Vec go = load_vec<Tg, acc_t>(gz.at(x, cb * V), m);  // lanes >= m read as 0
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
    in.tap_rows(b, y, cb, K, rows);
    weight_grad_strip<acc_t>(rows, ga_out, K, n, gw + cb * taps);
    in.tap_rows(b, y, cb + bl.nh, K, rows);
    weight_grad_strip<acc_t>(rows, gg_out, K, n, gw + (cb + bl.nh) * taps);
  }
}

// ---- planes: fill, pool -------------------------------------------------------------------------------------------

// Convert the strided input u into a blocked compute-dtype plane.
template <typename T, typename acc_t>
void fill_plane(const View4& u, const Blocking& bl, Plane<acc_t>& X) {
  at::parallel_for(0, u.B * u.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / u.H, y = r % u.H;
      const T* src = static_cast<const T*>(u.data) + b * u.sB + y * u.sH;
      for (int64_t cb = 0; cb < bl.nCB; ++cb) {
        acc_t* dst = X.pix(b, y, cb, 0);
        const int64_t c0 = bl.first(cb), m = bl.count(cb);
        for (int64_t x = 0; x < u.W; ++x) {
          load_row<T, acc_t>(src + x * u.sW + c0, dst + x * bl.V, m);
          std::fill(dst + x * bl.V + m, dst + (x + 1) * bl.V, acc_t(0));
        }
      }
    }
  });
}

// Adaptive average pooling of plane X (full res) into plane Pl (pooled res), one pooled row per task.
template <typename acc_t>
void pool_plane(Plane<acc_t>& X, Plane<acc_t>& Pl) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  const int64_t H = X.h, W = X.w, h = Pl.h, w = Pl.w;
  at::parallel_for(0, X.B * h, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> colsum(static_cast<size_t>(W * V));
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / h, oy = r % h;
      const int64_t y0 = window_start(oy, H, h), y1 = window_end(oy, H, h);
      for (int64_t cb = 0; cb < X.nCB; ++cb) {
        std::fill(colsum.begin(), colsum.end(), acc_t(0));
        for (int64_t y = y0; y < y1; ++y) {
          const acc_t* src = X.pix(b, y, cb, 0);
          for (int64_t i = 0; i < W * V; i += V) (Vec::loadu(colsum.data() + i) + Vec::loadu(src + i)).store(colsum.data() + i);
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

int64_t max_half_kernel(const PyramidArgs& a) {
  int64_t p = 0;
  for (int64_t i = 0; i < a.num_stages; ++i) p = std::max(p, a.stages[i].K / 2);
  return p;
}

// ---- forward -----------------------------------------------------------------------------------------------------

template <typename T, typename acc_t>
void forward_impl(const PyramidArgs& a) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  const View4& u = a.u;
  const int64_t B = u.B, H = u.H, W = u.W;
  const Blocking bl(u.C, V);
  const int64_t Ch = bl.Ch, P = max_half_kernel(a);
  const acc_t gs = static_cast<acc_t>(a.gate_scale);
  T* out = static_cast<T*>(a.out.data);

  Plane<acc_t> X(B, H, W, bl, P, false);
  fill_plane<T, acc_t>(u, bl, X);

  for (int64_t i = 0; i < a.num_stages; ++i) {
    const Stage& st = a.stages[i];
    const int64_t K = st.K;
    const std::vector<acc_t> wb = block_weight(static_cast<const acc_t*>(st.weight), K, bl, false);
    const int64_t off = i * Ch;  // this stage's channel slice of the concat output
    if (st.scale == 1.0) {
      // Conv + gate at full resolution, straight into the slice.
      at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
        std::vector<const acc_t*> rows(K);
        std::vector<acc_t> da(static_cast<size_t>(W * V)), dg(static_cast<size_t>(W * V));
        for (int64_t r = begin; r < end; ++r) {
          const int64_t b = r / H, y = r % H;
          const RowRef<T> o{out + b * a.out.sB + y * a.out.sH + off, a.out.sW};
          conv_gate_row<acc_t, T>(X, b, y, bl, wb.data(), K, a.sigmoid_gate, gs, rows.data(), da.data(), dg.data(), o);
        }
      });
      continue;
    }
    // Pool into a small plane, conv + gate at low resolution, then upsample into the slice.
    const int64_t h = pooled_size(H, st.scale), w = pooled_size(W, st.scale);
    Plane<acc_t> Pl(B, h, w, bl, P, false);
    pool_plane<acc_t>(X, Pl);
    // Gated low-res maps [B*h][w][Ch], every element written by conv_gate_row (no zero-fill).
    const std::unique_ptr<acc_t[]> Z(new acc_t[static_cast<size_t>(std::max<int64_t>(1, B * h * w * Ch))]);
    at::parallel_for(0, B * h, 1, [&](int64_t begin, int64_t end) {
      std::vector<const acc_t*> rows(K);
      std::vector<acc_t> da(static_cast<size_t>(w * V)), dg(static_cast<size_t>(w * V));
      for (int64_t r = begin; r < end; ++r) {
        const RowRef<acc_t> z{Z.get() + r * w * Ch, Ch};
        conv_gate_row<acc_t, acc_t>(Pl, r / h, r % h, bl, wb.data(), K, a.sigmoid_gate, gs, rows.data(), da.data(),
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
            store_vec<T, acc_t>(Vec::loadu(b0 + c, m) * vmx + Vec::loadu(b1 + c, m) * vlx, o + x * a.out.sW + c, m);
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
    std::vector<acc_t> grow(static_cast<size_t>(Ch));
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
          load_row<T, acc_t>(src + x * g.sW, grow.data(), Ch);
          const acc_t lx = static_cast<acc_t>(tx[x].lam);
          const Vec w0(wy * (acc_t(1) - lx)), w1(wy * lx);
          acc_t* d0 = dst + tx[x].i0 * Ch;
          acc_t* d1 = dst + tx[x].i1 * Ch;
          for (int64_t c = 0; c < Ch; c += V) {
            const int64_t m = std::min<int64_t>(V, Ch - c);
            const Vec gv = Vec::loadu(grow.data() + c, m);
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

template <typename T, typename acc_t>
void backward_impl(const PyramidArgs& a) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  const View4& u = a.u;
  const View4& g = a.out;
  const int64_t B = u.B, H = u.H, W = u.W;
  const Blocking bl(u.C, V);
  const int64_t Ch = bl.Ch, nCB = bl.nCB, P = max_half_kernel(a);
  const acc_t gs = static_cast<acc_t>(a.gate_scale);

  Plane<acc_t> X(B, H, W, bl, P, false);
  fill_plane<T, acc_t>(u, bl, X);
  Plane<acc_t> GU(B, H, W, bl, 0, true);

  for (int64_t i = 0; i < a.num_stages; ++i) {
    const Stage& st = a.stages[i];
    const int64_t K = st.K, off = i * Ch;
    const bool full = st.scale == 1.0;
    const int64_t h = full ? H : pooled_size(H, st.scale), w = full ? W : pooled_size(W, st.scale);
    const std::vector<acc_t> wb = block_weight(static_cast<const acc_t*>(st.weight), K, bl, false);
    const std::vector<acc_t> wf = block_weight(static_cast<const acc_t*>(st.weight), K, bl, true);

    // The stage input (the pooled plane is recomputed, never stored by the forward).
    Plane<acc_t> pooled(full ? 0 : B, h, w, bl, P, false);
    if (!full) pool_plane<acc_t>(X, pooled);
    Plane<acc_t>& in = full ? X : pooled;

    // dL/dz at the pooled resolution, compact [B*h][w][Ch] (the full-res stage reads grad_out directly).
    std::vector<acc_t> GZ(static_cast<size_t>(full ? 0 : B * h * w * Ch));
    if (!full) upsample_backward<T, acc_t>(g, off, Ch, h, w, GZ);

    // dL/dd, recomputing the conv output pair by pair of channel blocks (stored padded for the transposed
    // correlation), and dL/dw from the same rows while they are in cache. dL/dw goes into one partial sum per
    // part of a fixed partition of the rows, added in part order below: the same for any thread count.
    Plane<acc_t> GD(B, h, w, bl, P, false);
    const int64_t rows_total = B * h, nparts = std::min<int64_t>(rows_total, 16), wsize = nCB * K * K * V;
    std::vector<acc_t> partial(static_cast<size_t>(nparts * wsize), acc_t(0));
    at::parallel_for(0, nparts, 1, [&](int64_t begin, int64_t end) {
      std::vector<const acc_t*> rows(K);
      std::vector<acc_t> da(static_cast<size_t>(w * V)), dg(static_cast<size_t>(w * V));
      for (int64_t part = begin; part < end; ++part) {
        acc_t* gw = partial.data() + part * wsize;
        for (int64_t r = part * rows_total / nparts; r < (part + 1) * rows_total / nparts; ++r) {
          const int64_t b = r / h, y = r % h;
          if (full) {
            const RowRef<const T> gz{static_cast<const T*>(g.data) + b * g.sB + y * g.sH + off, g.sW};
            gate_backward_row<acc_t, T>(in, b, y, bl, wb.data(), K, a.sigmoid_gate, gs, gz, GD, gw, rows.data(),
                                        da.data(), dg.data());
          } else {
            const RowRef<const acc_t> gz{GZ.data() + r * w * Ch, Ch};
            gate_backward_row<acc_t, acc_t>(in, b, y, bl, wb.data(), K, a.sigmoid_gate, gs, gz, GD, gw, rows.data(),
                                            da.data(), dg.data());
          }
        }
      }
    });
    for (int64_t part = 1; part < nparts; ++part) {  // fixed order
      for (int64_t j = 0; j < wsize; j += V) {
        (Vec::loadu(partial.data() + j) + Vec::loadu(partial.data() + part * wsize + j)).store(partial.data() + j);
      }
    }
    acc_t* gwt = static_cast<acc_t*>(st.grad_weight);
    for (int64_t cb = 0; cb < nCB; ++cb) {
      for (int64_t t = 0; t < K * K; ++t) {
        std::memcpy(gwt + t * bl.Ci + bl.first(cb), partial.data() + (cb * K * K + t) * V, sizeof(acc_t) * bl.count(cb));
      }
    }

    // dL/d(stage input) = correlation of dL/dd with the flipped kernel, added into GU (or gP, then pooled back).
    Plane<acc_t> gP(full ? 0 : B, h, w, bl, 0, true);
    Plane<acc_t>& gin = full ? GU : gP;
    at::parallel_for(0, B * h, 1, [&](int64_t begin, int64_t end) {
      std::vector<const acc_t*> rows(K);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / h, y = r % h;
        for (int64_t cb = 0; cb < nCB; ++cb) {
          GD.tap_rows(b, y, cb, K, rows.data());
          conv_strip<acc_t>(rows.data(), wf.data() + cb * K * K * V, K, w, gin.pix(b, y, cb, 0), true);
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
        for (int64_t x = 0; x < W; ++x) store_row<T, acc_t>(src + x * V, dst + x * a.grad_u.sW + c0, m);
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
    std::vector<acc_t> buf(static_cast<size_t>(Cp), acc_t(0));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / nparts, part = t % nparts;
      const int64_t y0 = part * x.H / nparts, y1 = (part + 1) * x.H / nparts;
      acc_t* sum = partial.data() + t * Cp;
      for (int64_t y = y0; y < y1; ++y) {
        for (int64_t i = 0; i < x.W; ++i) {
          const T* px = static_cast<const T*>(x.data) + b * x.sB + y * x.sH + i * x.sW;
          load_row<T, acc_t>(px, buf.data(), C);
          for (int64_t c = 0; c < Cp; c += V) (Vec::loadu(sum + c) + Vec::loadu(buf.data() + c)).store(sum + c);
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
