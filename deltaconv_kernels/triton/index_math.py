"""@triton.jit helpers shared by the pyramid kernels: exact integer window / source-index math and the
K x K depthwise tap loop. Offsets that multiply a stride are cast to int64 first (16K maps exceed 2^31)."""

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
    lam = (num - i0 * den).to(tl.float32) / den.to(tl.float32)
    return i0, i1, lam


@triton.jit
def gate_forward(a, g, gate_scale, SIGMOID: tl.constexpr):
    """`a * sigmoid(g)` or `a * g * gate_scale`, fp32 in and out."""
    if SIGMOID:
        return a * (1.0 / (1.0 + tl.exp(-g)))
    else:
        return a * g * gate_scale


@triton.jit
def conv_pair(src_ptr, s_h, s_w, s_c, src_h, src_w, in_h, in_w, oh, ow, h0, ca, cmask, half,
              w_ptr, w_h, w_w, w_c,
              K: tl.constexpr, POOL: tl.constexpr, MAXWH: tl.constexpr, MAXWW: tl.constexpr,
              BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Depthwise K x K cross-correlation (zero padding K//2) at pixels (oh, ow) [BLOCK_P] of the a-channels `ca`
    and the g-channels `ca + half` [BLOCK_C]; returns two fp32 [BLOCK_P, BLOCK_C] accumulators.

    `src_ptr` points at one batch item. The conv runs on a `src_h x src_w` map; with POOL that map is the
    adaptive average pool of the `in_h x in_w` source, computed on the fly (windows up to MAXWH x MAXWW)
    and never written to memory."""
    acc_a = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    acc_g = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    off_a = ca.to(tl.int64) * s_c
    off_g = (ca + half).to(tl.int64) * s_c
    wa_ptr = w_ptr + ca.to(tl.int64) * w_c
    wg_ptr = w_ptr + (ca + half).to(tl.int64) * w_c
    # Kernel rows that reach the map for some row of the tile (starting at h0): border tiles and maps smaller
    # than K skip the rest.
    P: tl.constexpr = K // 2
    kh_lo = tl.maximum(0, P - tl.max(oh, axis=0))
    kh_hi = tl.minimum(K, src_h + P - h0)
    for kh in range(kh_lo, kh_hi):
        ih = oh + (kh - K // 2)
        h_ok = (ih >= 0) & (ih < src_h)
        if POOL:
            ys, ye = adaptive_window(ih, in_h, src_h)
        else:
            row_off = ih.to(tl.int64) * s_h
        for kw in tl.static_range(K):
            iw = ow + (kw - K // 2)
            ok = h_ok & (iw >= 0) & (iw < src_w)
            m = ok[:, None] & cmask[None, :]
            if POOL:
                xs, xe = adaptive_window(iw, in_w, src_w)
                sum_a = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
                sum_g = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
                for dy in tl.static_range(MAXWH):
                    y = ys + dy
                    y_ok = y < ye
                    y_off = y.to(tl.int64) * s_h
                    for dx in tl.static_range(MAXWW):
                        x = xs + dx
                        pix = y_off + x.to(tl.int64) * s_w
                        mm = m & (y_ok & (x < xe))[:, None]
                        sum_a += tl.load(src_ptr + pix[:, None] + off_a[None, :], mask=mm, other=0.0).to(tl.float32)
                        sum_g += tl.load(src_ptr + pix[:, None] + off_g[None, :], mask=mm, other=0.0).to(tl.float32)
                inv = 1.0 / ((ye - ys) * (xe - xs)).to(tl.float32)
                va = sum_a * inv[:, None]
                vg = sum_g * inv[:, None]
            else:
                pix = row_off + iw.to(tl.int64) * s_w
                va = tl.load(src_ptr + pix[:, None] + off_a[None, :], mask=m, other=0.0).to(tl.float32)
                vg = tl.load(src_ptr + pix[:, None] + off_g[None, :], mask=m, other=0.0).to(tl.float32)
            tap = kh * w_h + kw * w_w
            wa = tl.load(wa_ptr + tap, mask=cmask, other=0.0).to(tl.float32)
            wg = tl.load(wg_ptr + tap, mask=cmask, other=0.0).to(tl.float32)
            acc_a += va * wa[None, :]
            acc_g += vg * wg[None, :]
    return acc_a, acc_g


@triton.jit
def tile_coords(pid, n_hblocks, n_wblocks, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Program id -> (batch index as int64, rows [BLOCK_P], cols [BLOCK_P], first row) of a spatial tile."""
    b = pid // (n_hblocks * n_wblocks)
    t = pid % (n_hblocks * n_wblocks)
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    h0 = (t // n_wblocks) * BLOCK_H
    oh = h0 + p // BLOCK_W
    ow = (t % n_wblocks) * BLOCK_W + p % BLOCK_W
    return b.to(tl.int64), oh, ow, h0
