// CPU kernels of the fused pyramid stage and the pooled-bias mean (DESIGN §2), channels-last.
//
// Layout of the work: every internal buffer is fp32 (fp64 for fp64 tensors) with the channel count padded
// to a multiple of the vector width (`Cp`, zero-filled), and spatial rows padded with `P` zero pixels on
// both sides, so the K x K inner loops have no branches and no channel tails. Channels are innermost and
// vectorised with at::vec; rows are spread over threads with at::parallel_for. Every output element (and
// every partial sum of a weight gradient) is written by exactly one task in a fixed order, so results do
// not depend on the thread count.
//
// This is the one vectorised translation unit, compiled once per instruction set of csrc/cpu/isa.def (the
// build passes that ISA's -m flags and at::vec's CPU_CAPABILITY macros); each copy lives in namespace
// deltaconv::cpu::<ISA> and ends with its table of entry points, and csrc/cpu/capability.cpp picks one per call.

#if !defined(CPU_CAPABILITY)
#error "compile csrc/cpu/kernels.cpp once per ISA of csrc/cpu/isa.def, with -DCPU_CAPABILITY=<ISA> (setup.py and CMake do)"
#endif

#include <ATen/Parallel.h>
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

// out[x] = sum_{ky, kx < K} rows[ky][x + kx] * w[ky * K + kx]   (vectors of V lanes), for x < n.
// rows[ky] == nullptr is a zero row (vertical padding); horizontal padding is in the strips themselves.
template <typename acc_t>
void conv_strip(const acc_t* const* rows, const acc_t* w, int64_t K, int64_t n, acc_t* out) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  constexpr int64_t XB = V >= 16 ? 8 : 4;  // output pixels per register block (AVX-512 has 32 registers)
  int64_t x = 0;
  for (; x + XB <= n; x += XB) {
    Vec acc[XB];
    for (int64_t j = 0; j < XB; ++j) acc[j] = Vec(acc_t(0));
    for (int64_t ky = 0; ky < K; ++ky) {
      if (rows[ky] == nullptr) continue;
      const acc_t* r = rows[ky] + x * V;
      const acc_t* wk = w + ky * K * V;
      for (int64_t kx = 0; kx < K; ++kx) {
        const Vec wv = Vec::loadu(wk + kx * V);
        const acc_t* rk = r + kx * V;
#pragma GCC unroll 8
        for (int64_t j = 0; j < XB; ++j) acc[j] = at::vec::fmadd(Vec::loadu(rk + j * V), wv, acc[j]);
      }
    }
    for (int64_t j = 0; j < XB; ++j) acc[j].store(out + (x + j) * V);
  }
  for (; x < n; ++x) {
    Vec acc(acc_t(0));
    for (int64_t ky = 0; ky < K; ++ky) {
      if (rows[ky] == nullptr) continue;
      for (int64_t kx = 0; kx < K; ++kx) {
        acc = at::vec::fmadd(Vec::loadu(rows[ky] + (x + kx) * V), Vec::loadu(w + (ky * K + kx) * V), acc);
      }
    }
    acc.store(out + x * V);
  }
}

// gw[ky * K + kx] += sum_{x < n} gd[x] * rows[ky][x + kx]   (vectors of V lanes)
template <typename acc_t>
void weight_grad_strip(const acc_t* const* rows, const acc_t* gd, int64_t K, int64_t n, acc_t* gw) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  constexpr int64_t KB = V >= 16 ? 8 : 4;  // taps per register block
  for (int64_t ky = 0; ky < K; ++ky) {
    if (rows[ky] == nullptr) continue;
    const acc_t* r = rows[ky];
    int64_t kx = 0;
    for (; kx + KB <= K; kx += KB) {
      Vec acc[KB];
      for (int64_t j = 0; j < KB; ++j) acc[j] = Vec(acc_t(0));
      for (int64_t x = 0; x < n; ++x) {
        const Vec g = Vec::loadu(gd + x * V);
        const acc_t* rk = r + (x + kx) * V;
#pragma GCC unroll 8
        for (int64_t j = 0; j < KB; ++j) acc[j] = at::vec::fmadd(g, Vec::loadu(rk + j * V), acc[j]);
      }
      for (int64_t j = 0; j < KB; ++j) {
        acc_t* dst = gw + (ky * K + kx + j) * V;
        (Vec::loadu(dst) + acc[j]).store(dst);
      }
    }
    for (; kx < K; ++kx) {
      Vec acc(acc_t(0));
      for (int64_t x = 0; x < n; ++x) acc = at::vec::fmadd(Vec::loadu(gd + x * V), Vec::loadu(r + (x + kx) * V), acc);
      acc_t* dst = gw + (ky * K + kx) * V;
      (Vec::loadu(dst) + acc).store(dst);
    }
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

// z[x, c] = gate(a, g) from the blocked conv output d [nCB][n][V] into the compact row z [n][Ch].
template <typename acc_t>
void gate_row(const acc_t* d, int64_t n, const Blocking& bl, bool sigmoid_gate, acc_t gate_scale, acc_t* z) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  const Vec gs(gate_scale);
  for (int64_t cb = 0; cb < bl.nh; ++cb) {
    const acc_t* da = d + cb * n * V;
    const acc_t* dg = d + (cb + bl.nh) * n * V;
    const int64_t m = bl.count(cb);
    for (int64_t x = 0; x < n; ++x) {
      const Vec a = Vec::loadu(da + x * V), g = Vec::loadu(dg + x * V);
      const Vec r = sigmoid_gate ? a * sigmoid<acc_t>(g) : a * g * gs;
      r.store(z + x * bl.Ch + cb * V, m);
    }
  }
}

// From d (blocked [nCB][n][V]) and gz = dL/dz (compact [n][Ch]), writes gd = dL/dd into plane row (b, y).
template <typename acc_t>
void gate_backward_row(const acc_t* d, const acc_t* gz, int64_t n, const Blocking& bl, bool sigmoid_gate,
                       acc_t gate_scale, Plane<acc_t>& GD, int64_t b, int64_t y) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = kVec<acc_t>;
  const Vec gs(gate_scale), one(acc_t(1));
  for (int64_t cb = 0; cb < bl.nh; ++cb) {
    const acc_t* da = d + cb * n * V;
    const acc_t* dg = d + (cb + bl.nh) * n * V;
    acc_t* ga_out = GD.pix(b, y, cb, 0);
    acc_t* gg_out = GD.pix(b, y, cb + bl.nh, 0);
    const int64_t m = bl.count(cb);
    for (int64_t x = 0; x < n; ++x) {
      const Vec a = Vec::loadu(da + x * V), g = Vec::loadu(dg + x * V);
      const Vec go = Vec::loadu(gz + x * bl.Ch + cb * V, m);  // lanes >= m read as 0
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

// Conv of all blocks of row (b, y) of `in` into d [nCB][n][V].
template <typename acc_t>
void conv_all_blocks(Plane<acc_t>& in, int64_t b, int64_t y, const std::vector<acc_t>& wb, int64_t K,
                     std::vector<const acc_t*>& rows, acc_t* d) {
  const int64_t V = in.V, n = in.w;
  for (int64_t cb = 0; cb < in.nCB; ++cb) {
    in.tap_rows(b, y, cb, K, rows.data());
    conv_strip<acc_t>(rows.data(), wb.data() + cb * K * K * V, K, n, d + cb * n * V);
  }
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
        std::vector<acc_t> d(static_cast<size_t>(bl.nCB * W * V)), z(static_cast<size_t>(W * Ch));
        for (int64_t r = begin; r < end; ++r) {
          const int64_t b = r / H, y = r % H;
          conv_all_blocks<acc_t>(X, b, y, wb, K, rows, d.data());
          gate_row<acc_t>(d.data(), W, bl, a.sigmoid_gate, gs, z.data());
          T* o = out + b * a.out.sB + y * a.out.sH + off;
          for (int64_t x = 0; x < W; ++x) store_row<T, acc_t>(z.data() + x * Ch, o + x * a.out.sW, Ch);
        }
      });
      continue;
    }
    // Pool into a small plane, conv + gate at low resolution, then upsample into the slice.
    const int64_t h = pooled_size(H, st.scale), w = pooled_size(W, st.scale);
    Plane<acc_t> Pl(B, h, w, bl, P, false);
    pool_plane<acc_t>(X, Pl);
    std::vector<acc_t> Z(static_cast<size_t>(B * h * w * Ch));
    at::parallel_for(0, B * h, 1, [&](int64_t begin, int64_t end) {
      std::vector<const acc_t*> rows(K);
      std::vector<acc_t> d(static_cast<size_t>(bl.nCB * w * V));
      for (int64_t r = begin; r < end; ++r) {
        conv_all_blocks<acc_t>(Pl, r / h, r % h, wb, K, rows, d.data());
        gate_row<acc_t>(d.data(), w, bl, a.sigmoid_gate, gs, Z.data() + r * w * Ch);
      }
    });
    std::vector<BilinearTap> tx(static_cast<size_t>(W));
    for (int64_t x = 0; x < W; ++x) tx[x] = bilinear_tap(x, w, W);
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> blend(static_cast<size_t>(w * Ch)), res(static_cast<size_t>(Ch));
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / H, y = r % H;
        const BilinearTap ty = bilinear_tap(y, h, H);
        const acc_t ly = static_cast<acc_t>(ty.lam);
        const Vec vly(ly), vmy(acc_t(1) - ly);
        const acc_t* z0 = Z.data() + (b * h + ty.i0) * w * Ch;
        const acc_t* z1 = Z.data() + (b * h + ty.i1) * w * Ch;
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
            (Vec::loadu(b0 + c, m) * vmx + Vec::loadu(b1 + c, m) * vlx).store(res.data() + c, m);
          }
          store_row<T, acc_t>(res.data(), o + x * a.out.sW, Ch);
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

    // dL/dz at the stage resolution, compact [B*h][w][Ch].
    std::vector<acc_t> GZ(static_cast<size_t>(B * h * w * Ch));
    if (full) {
      at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const T* src = static_cast<const T*>(g.data) + (r / H) * g.sB + (r % H) * g.sH + off;
          for (int64_t x = 0; x < W; ++x) load_row<T, acc_t>(src + x * g.sW, GZ.data() + (r * W + x) * Ch, Ch);
        }
      });
    } else {
      upsample_backward<T, acc_t>(g, off, Ch, h, w, GZ);
    }

    // dL/dd, recomputing the conv output d row by row; stored padded for the transposed correlation.
    Plane<acc_t> GD(B, h, w, bl, P, false);
    at::parallel_for(0, B * h, 1, [&](int64_t begin, int64_t end) {
      std::vector<const acc_t*> rows(K);
      std::vector<acc_t> d(static_cast<size_t>(nCB * w * V));
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / h, y = r % h;
        conv_all_blocks<acc_t>(in, b, y, wb, K, rows, d.data());
        gate_backward_row<acc_t>(d.data(), GZ.data() + r * w * Ch, w, bl, a.sigmoid_gate, gs, GD, b, y);
      }
    });

    // dL/d(stage input) = correlation of dL/dd with the flipped kernel, added into GU (or gP, then pooled back).
    Plane<acc_t> gP(full ? 0 : B, h, w, bl, 0, true);
    Plane<acc_t>& gin = full ? GU : gP;
    at::parallel_for(0, B * h, 1, [&](int64_t begin, int64_t end) {
      std::vector<const acc_t*> rows(K);
      std::vector<acc_t> d(static_cast<size_t>(nCB * w * V));
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / h, y = r % h;
        for (int64_t cb = 0; cb < nCB; ++cb) {
          GD.tap_rows(b, y, cb, K, rows.data());
          conv_strip<acc_t>(rows.data(), wf.data() + cb * K * K * V, K, w, d.data());
          acc_t* dst = gin.pix(b, y, cb, 0);
          for (int64_t j = 0; j < w * V; j += V) (Vec::loadu(dst + j) + Vec::loadu(d.data() + j)).store(dst + j);
        }
      }
    });
    if (!full) pool_backward<acc_t>(gP, GU);

    // dL/dw: a fixed number of row blocks, each summed by one task, then added in block order, so the
    // result is the same for any thread count.
    const int64_t rows_total = B * h;
    const int64_t nblocks = std::min<int64_t>(rows_total, 64);
    const int64_t wsize = nCB * K * K * V;
    std::vector<acc_t> partial(static_cast<size_t>(nblocks * wsize), acc_t(0));
    at::parallel_for(0, nblocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<const acc_t*> rows(K);
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t r0 = blk * rows_total / nblocks, r1 = (blk + 1) * rows_total / nblocks;
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t b = r / h, y = r % h;
          for (int64_t cb = 0; cb < nCB; ++cb) {
            in.tap_rows(b, y, cb, K, rows.data());
            weight_grad_strip<acc_t>(rows.data(), GD.pix(b, y, cb, 0), K, w,
                                     partial.data() + blk * wsize + cb * K * K * V);
          }
        }
      }
    });
    for (int64_t blk = 1; blk < nblocks; ++blk) {  // fixed order
      for (int64_t j = 0; j < wsize; j += V) {
        (Vec::loadu(partial.data() + j) + Vec::loadu(partial.data() + blk * wsize + j)).store(partial.data() + j);
      }
    }
    acc_t* gw = static_cast<acc_t*>(st.grad_weight);
    for (int64_t cb = 0; cb < nCB; ++cb) {
      for (int64_t t = 0; t < K * K; ++t) {
        std::memcpy(gw + t * bl.Ci + bl.first(cb), partial.data() + (cb * K * K + t) * V, sizeof(acc_t) * bl.count(cb));
      }
    }
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
