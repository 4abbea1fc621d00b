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


# Adjacent outputs along W that one thread computes per channel vector (docs/DESIGN.md §2, reuse loaded rows across
# taps): per kernel row it loads and converts the STRIP + K - 1 inputs the strip needs once each, and each feeds every
# tap that reads it (STRIP * K FMAs per STRIP + K - 1 loads and conversions). `strip_conv` names its 8 accumulators.
STRIP = tl.constexpr(8)


@triton.jit
def tap_value(ptr, cmask, EVEN_C: tl.constexpr, PACKED: tl.constexpr):
    """One tap input as fp32: [R, BC] (a masked channel tail unless EVEN_C), or for a bf16 source read as int32
    words of two channels, [R, BC/2, 2] with channel 2i + k at [.., i, k]."""
    if PACKED:
        lo, hi = bf16_pair(tl.load(ptr))
        return tl.join(lo, hi)
    elif EVEN_C:
        return tl.load(ptr).to(tl.float32)
    else:
        return tl.load(ptr, mask=cmask[None, :], other=0.0).to(tl.float32)


@triton.jit
def tap_weight(ptr, cmask, EVEN_C: tl.constexpr, PACKED: tl.constexpr, BC2: tl.constexpr):
    """The fp32 weights of one tap, broadcastable against `tap_value` (PACKED: `packed_weight` order, the block's
    even channels then its odd ones)."""
    if PACKED:
        return tl.join(tl.load(ptr), tl.load(ptr + BC2))[None, :, :]
    elif EVEN_C:
        return tl.load(ptr)[None, :]
    else:
        return tl.load(ptr, mask=cmask, other=0.0)[None, :]


@triton.jit
def strip_conv(row, s_h, w_row, cmask, S_W: tl.constexpr, CI: tl.constexpr, K: tl.constexpr, EVEN_C: tl.constexpr,
               PACKED: tl.constexpr, R: tl.constexpr, BLOCK_C: tl.constexpr):
    """K x K depthwise cross-correlation of STRIP = 8 adjacent outputs along W for R strips x a channel block:
    `row` points (per strip, per channel, or per int32 word when PACKED) at the strip's first input of the first
    kernel row, `w_row` at the first tap's weights (fp32 [K, K, CI] rows). Per kernel row the sliding window
    x0..x7 holds 8 converted inputs: each of the 8 + K - 1 inputs is loaded and converted once and feeds the (up to)
    8 taps that read it. Returns the 8 accumulators (one per strip position), fp32."""
    if PACKED:
        a0 = tl.zeros([R, BLOCK_C // 2, 2], dtype=tl.float32)
    else:
        a0 = tl.zeros([R, BLOCK_C], dtype=tl.float32)
    a1 = a0
    a2 = a0
    a3 = a0
    a4 = a0
    a5 = a0
    a6 = a0
    a7 = a0
    STEP: tl.constexpr = S_W // 2 if PACKED else S_W
    for _kh in range(K):
        x0 = tap_value(row, cmask, EVEN_C, PACKED)
        x1 = tap_value(row + STEP, cmask, EVEN_C, PACKED)
        x2 = tap_value(row + 2 * STEP, cmask, EVEN_C, PACKED)
        x3 = tap_value(row + 3 * STEP, cmask, EVEN_C, PACKED)
        x4 = tap_value(row + 4 * STEP, cmask, EVEN_C, PACKED)
        x5 = tap_value(row + 5 * STEP, cmask, EVEN_C, PACKED)
        x6 = tap_value(row + 6 * STEP, cmask, EVEN_C, PACKED)
        for kw in tl.static_range(K):
            x7 = tap_value(row + (kw + 7) * STEP, cmask, EVEN_C, PACKED)
            w = tap_weight(w_row + kw * CI, cmask, EVEN_C, PACKED, BLOCK_C // 2)
            a0 += x0 * w
            a1 += x1 * w
            a2 += x2 * w
            a3 += x3 * w
            a4 += x4 * w
            a5 += x5 * w
            a6 += x6 * w
            a7 += x7 * w
            # Slide the window one input along W (register renaming in the unrolled loop, no moves).
            x0 = x1
            x1 = x2
            x2 = x3
            x3 = x4
            x4 = x5
            x5 = x6
            x6 = x7
        row += s_h // 2 if PACKED else s_h
        w_row += K * CI
    return a0, a1, a2, a3, a4, a5, a6, a7


@triton.jit
def conv_half_tile(row, s_h, w_row, cmask, S_W: tl.constexpr, CI: tl.constexpr, K: tl.constexpr,
                   EVEN_C: tl.constexpr, PACKED: tl.constexpr, R: tl.constexpr, BLOCK_C: tl.constexpr):
    """`strip_conv` of one gate half as one [R * 8, BLOCK_C] tile, row r * 8 + s = strip r's position s (the joins
    and the PACKED reshapes are register-only; the permute and reshape may go through shared memory once, after the
    loop)."""
    a0, a1, a2, a3, a4, a5, a6, a7 = strip_conv(row, s_h, w_row, cmask, S_W, CI, K, EVEN_C, PACKED, R, BLOCK_C)
    t = tl.join(tl.join(tl.join(tl.reshape(a0, [R, BLOCK_C]), tl.reshape(a1, [R, BLOCK_C])),
                        tl.join(tl.reshape(a2, [R, BLOCK_C]), tl.reshape(a3, [R, BLOCK_C]))),
                tl.join(tl.join(tl.reshape(a4, [R, BLOCK_C]), tl.reshape(a5, [R, BLOCK_C])),
                        tl.join(tl.reshape(a6, [R, BLOCK_C]), tl.reshape(a7, [R, BLOCK_C]))))
    # t[r, c, b, a, z] = position 4z + 2a + b
    return tl.reshape(tl.permute(t, (0, 4, 3, 2, 1)), [R * 8, BLOCK_C])


@triton.jit
def conv_pair_tile(tile_ptr, s_h, w_ptr, cmask, S_W: tl.constexpr, HALF: tl.constexpr, K: tl.constexpr,
                   EVEN_C: tl.constexpr, PACKED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
                   BLOCK_C: tl.constexpr):
    """Depthwise K x K cross-correlation of a zero-padded channels-last map at one BLOCK_H x BLOCK_W tile, for the
    channel block at `tile_ptr` ("a") and the block HALF channels further ("g"); two fp32 [BLOCK_P, BLOCK_C] sums,
    pixel p = h * BLOCK_W + w.

    `tile_ptr` points at padded pixel (h0, w0) (= output pixel (h0, w0) shifted by the K//2 border), channel c0;
    rows are `s_h` elements apart, pixels S_W (constexpr: every tap's offset inside a kernel row is a constant the
    compiler folds into the load). `w_ptr` points at fp32 weights [K, K, 2*HALF] (contiguous), channel c0.
    The padding makes every tap load in bounds: no masks except the channel tail when not EVEN_C.
    Each thread computes strips of STRIP outputs along W (`strip_conv`; BLOCK_W a multiple of STRIP), the a half
    then the g half. PACKED (bf16 sources, even channel blocks): the source is read as int32 words of two channels
    (`bf16_pair`) and the weights come in `packed_weight` order."""
    NQ: tl.constexpr = BLOCK_W // STRIP
    R: tl.constexpr = BLOCK_H * NQ
    CI: tl.constexpr = 2 * HALF
    r = tl.arange(0, R)
    strip = (r // NQ) * s_h + (r % NQ) * (STRIP * S_W)
    if PACKED:
        c = tl.arange(0, BLOCK_C // 2)
        row = tile_ptr.to(tl.pointer_type(tl.int32)) + (strip // 2)[:, None] + c[None, :]
        g_off: tl.constexpr = HALF // 2
    else:
        c = tl.arange(0, BLOCK_C)
        row = tile_ptr + strip[:, None] + c[None, :]
        g_off: tl.constexpr = HALF
    w_row = w_ptr + c
    acc_a = conv_half_tile(row, s_h, w_row, cmask, S_W, CI, K, EVEN_C, PACKED, R, BLOCK_C)
    acc_g = conv_half_tile(row + g_off, s_h, w_row + HALF, cmask, S_W, CI, K, EVEN_C, PACKED, R, BLOCK_C)
    return acc_a, acc_g


@triton.jit
def bf16_pair(word):
    """The two bf16 values of an int32 word as fp32 (low = even channel): a bf16 is the top half of its fp32, so one
    shift or one mask each (the compiler's own conversion of the high half costs a permute and a shift)."""
    lo = (word << 16).to(tl.float32, bitcast=True)
    hi = (word & -65536).to(tl.float32, bitcast=True)
    return lo, hi
