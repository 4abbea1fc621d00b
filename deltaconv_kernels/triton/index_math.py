"""@triton.jit helpers shared by the pyramid kernels: exact integer window / source-index math, the gate, tile
coordinates and the K x K depthwise tap loop.

Offsets: a 64-bit scalar base per batch item, tile and kernel row, and 32-bit offsets inside a tile (16K maps have
more than 2^31 elements, one tile row of a padded map far fewer)."""

import triton
import triton.language as tl


@triton.jit
def adaptive_window(o, in_size, out_size):
    """PyTorch adaptive-pool window `[floor(o*in/out), ceil((o+1)*in/out))` in integer math (never floats:
    the released code's fp16 window indices overflowed at 16K)."""
    start = (o * in_size) // out_size
    end = ((o + 1) * in_size + out_size - 1) // out_size
    return start, end


@triton.jit
def bilinear_taps(dst, in_size, out_size):
    """align_corners=False source taps of output index `dst` (int64): `src = (dst + 0.5) * in/out - 0.5`,
    clamped at 0, as the exact rational `((2*dst + 1)*in - out) / (2*out)`; returns (i0, i1, lambda)."""
    num = (2 * dst + 1) * in_size - out_size
    num = tl.maximum(num, 0)
    den = 2 * out_size
    i0 = tl.minimum(num // den, in_size - 1)
    i1 = tl.minimum(i0 + 1, in_size - 1)
    # Fast (2-ulp) division: the IEEE one calls a slow-path subroutine whose register saves spill.
    lam = tl.fdiv((num - i0 * den).to(tl.float32), den.to(tl.float32), ieee_rounding=False)
    return i0, i1, lam


@triton.jit
def first_reaching_row(i, low, out):
    """Smallest output index giving low-res index i a nonzero bilinear weight (`launch.first_reaching_row`)."""
    return tl.where(i <= 0, 0, (out * (2 * i - 1) - low) // (2 * low) + 1)


@triton.jit
def bilinear_weight(y, i, low, out):
    """Weight that output index y gives to low-res index i in the bilinear upsample (0 where it gives none)."""
    i0, i1, lam = bilinear_taps(y, low, out)
    return tl.where(i0 == i, 1.0 - lam, 0.0) + tl.where(i1 == i, lam, 0.0)


@triton.jit
def gate_forward(a, g, gate_scale, SIGMOID: tl.constexpr):
    """`a * sigmoid(g)` or `a * g * gate_scale`, fp32 in and out."""
    if SIGMOID:
        return a * (1.0 / (1.0 + tl.exp(-g)))
    else:
        return a * g * gate_scale


@triton.jit
def tile_origin(pid, map_h, map_w, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Program id -> (batch item, first row, first column) of a BLOCK_H x BLOCK_W spatial tile."""
    n_wb = tl.cdiv(map_w, BLOCK_W)
    tiles = tl.cdiv(map_h, BLOCK_H) * n_wb
    b = pid // tiles
    t = pid % tiles
    return b, (t // n_wb) * BLOCK_H, (t % n_wb) * BLOCK_W


@triton.jit
def conv_program(src_ptr, s_b, s_h, map_h, map_w, S_W: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr,
                 BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's share of a conv kernel (grid: B * spatial tiles, channel blocks): (batch item as int64, first
    row, first column, first channel, the pointer to that pixel and channel in the zero-bordered source, the channels
    [BLOCK_C] of the a-half, their mask)."""
    b, h0, w0 = tile_origin(tl.program_id(0), map_h, map_w, BLOCK_H, BLOCK_W)
    c0 = tl.program_id(1) * BLOCK_C
    b64 = b.to(tl.int64)
    tile = src_ptr + b64 * s_b + h0.to(tl.int64) * s_h + (w0 * S_W + c0)
    ca = c0 + tl.arange(0, BLOCK_C)
    return b64, h0, w0, c0, tile, ca, ca < HALF


@triton.jit
def tile_coords(pid, map_h, map_w, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Program id -> (batch item as int64, rows [BLOCK_P], cols [BLOCK_P]) of a spatial tile."""
    b, h0, w0 = tile_origin(pid, map_h, map_w, BLOCK_H, BLOCK_W)
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    return b.to(tl.int64), h0 + p // BLOCK_W, w0 + p % BLOCK_W


@triton.jit
def conv_pair_tile(tile_ptr, s_h, w_ptr, cmask, S_W: tl.constexpr, HALF: tl.constexpr, K: tl.constexpr,
                   EVEN_C: tl.constexpr, PACKED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
                   BLOCK_C: tl.constexpr):
    """Depthwise K x K cross-correlation of a zero-padded channels-last map at one BLOCK_H x BLOCK_W tile, for the
    channel block at `tile_ptr` ("a") and the block HALF channels further ("g"); two fp32 [BLOCK_P, BLOCK_C] sums.

    `tile_ptr` points at padded pixel (h0, w0) (= output pixel (h0, w0) shifted by the K//2 border), channel c0;
    rows are `s_h` elements apart, pixels S_W (constexpr: every tap's offset inside a kernel row is a constant the
    compiler folds into the load). `w_ptr` points at fp32 weights [K, K, 2*HALF] (contiguous), channel c0.
    The padding makes every tap load in bounds: no masks except the channel tail when not EVEN_C.
    PACKED (bf16 sources): see `conv_pair_tile_bf16`; the weights are then in `packed_weight` order."""
    if PACKED:
        return conv_pair_tile_bf16(tile_ptr, s_h, w_ptr, S_W, HALF, K, BLOCK_H, BLOCK_W, BLOCK_C)
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    c = tl.arange(0, BLOCK_C)
    offs = ((p // BLOCK_W) * s_h + (p % BLOCK_W) * S_W)[:, None] + c[None, :]
    CI: tl.constexpr = 2 * HALF
    acc_a = tl.zeros([BLOCK_H * BLOCK_W, BLOCK_C], dtype=tl.float32)
    acc_g = tl.zeros([BLOCK_H * BLOCK_W, BLOCK_C], dtype=tl.float32)
    row = tile_ptr + offs
    w_row = w_ptr + c
    for _kh in range(K):
        for kw in tl.static_range(K):
            if EVEN_C:
                va = tl.load(row + kw * S_W)
                vg = tl.load(row + (kw * S_W + HALF))
                wa = tl.load(w_row + kw * CI)
                wg = tl.load(w_row + (kw * CI + HALF))
            else:
                va = tl.load(row + kw * S_W, mask=cmask[None, :], other=0.0)
                vg = tl.load(row + (kw * S_W + HALF), mask=cmask[None, :], other=0.0)
                wa = tl.load(w_row + kw * CI, mask=cmask, other=0.0)
                wg = tl.load(w_row + (kw * CI + HALF), mask=cmask, other=0.0)
            acc_a += va.to(tl.float32) * wa[None, :]
            acc_g += vg.to(tl.float32) * wg[None, :]
        row += s_h
        w_row += K * CI
    return acc_a, acc_g


@triton.jit
def bf16_pair(word):
    """The two bf16 values of an int32 word as fp32 (low = even channel): a bf16 is the top half of its fp32, so one
    shift or one mask each (the compiler's own conversion of the high half costs a permute and a shift)."""
    lo = (word << 16).to(tl.float32, bitcast=True)
    hi = (word & -65536).to(tl.float32, bitcast=True)
    return lo, hi


@triton.jit
def conv_pair_tile_bf16(tile_ptr, s_h, w_ptr, S_W: tl.constexpr, HALF: tl.constexpr, K: tl.constexpr,
                        BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """`conv_pair_tile` for a bf16 source read as int32 words of two channels (even channel counts and blocks only),
    accumulating even and odd channels apart; the weights come with each BLOCK_C block as its even channels, then its
    odd ones (`packed_weight`). Returns the sums in natural channel order."""
    BC2: tl.constexpr = BLOCK_C // 2
    CI: tl.constexpr = 2 * HALF
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    c = tl.arange(0, BC2)
    row = tile_ptr.to(tl.pointer_type(tl.int32)) + \
        ((p // BLOCK_W) * (s_h // 2) + (p % BLOCK_W) * (S_W // 2))[:, None] + c[None, :]
    w_row = w_ptr + c
    a0 = tl.zeros([BLOCK_H * BLOCK_W, BC2], dtype=tl.float32)
    a1 = tl.zeros([BLOCK_H * BLOCK_W, BC2], dtype=tl.float32)
    g0 = tl.zeros([BLOCK_H * BLOCK_W, BC2], dtype=tl.float32)
    g1 = tl.zeros([BLOCK_H * BLOCK_W, BC2], dtype=tl.float32)
    for _kh in range(K):
        for kw in tl.static_range(K):
            va0, va1 = bf16_pair(tl.load(row + kw * (S_W // 2)))
            vg0, vg1 = bf16_pair(tl.load(row + (kw * (S_W // 2) + HALF // 2)))
            a0 += va0 * tl.load(w_row + kw * CI)[None, :]
            a1 += va1 * tl.load(w_row + (kw * CI + BC2))[None, :]
            g0 += vg0 * tl.load(w_row + (kw * CI + HALF))[None, :]
            g1 += vg1 * tl.load(w_row + (kw * CI + HALF + BC2))[None, :]
        row += s_h // 2
        w_row += K * CI
    acc_a = tl.reshape(tl.join(a0, a1), [BLOCK_H * BLOCK_W, BLOCK_C])
    acc_g = tl.reshape(tl.join(g0, g1), [BLOCK_H * BLOCK_W, BLOCK_C])
    return acc_a, acc_g
