"""Backward of the fused pyramid: `grad_u` and every stage's weight gradient, all accumulated in fp32.

Per stage, on the stage's zero-bordered conv input `src` (`pyramid_fwd.stage_source`: u copied, or pooled once):
  1. gate backward: recompute a, g = conv(src) per tile and write gd = [dz/da, dz/dg] * gz into a zero-bordered
     fp32 buffer; for s < 1, gz (the upsample backward) is gathered in the same kernel from the exact output pixels
     whose bilinear taps reach each low-res pixel (4 x 4 of them at 2x);
  2. input backward: the same conv kernel with the kernel flipped, on gd (the border makes it unmasked too);
     s = 1 adds it to grad_u, s < 1 writes the low-res gradient that the pool backward spreads into grad_u;
  3. weight gradient: each program owns a band of rows of one image and a channel block, holds all K*K taps of
     its block in registers (in power-of-two pieces that sum to K*K: no padded taps at K = 13), and writes one fp32
     partial [taps, Ci]; the partials are summed in a fixed order by one torch reduction. No atomics anywhere: the
     results are bit-reproducible.
grad_out is read through its strides: it is a channel slice of the concat gradient (the released code's bug).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltaconv_kernels.geometry import pooled_size
from deltaconv_kernels.triton import launch
from deltaconv_kernels.triton.index_math import (
    adaptive_window,
    bilinear_weight,
    conv_pair_tile,
    conv_program,
    first_reaching_row,
    tile_coords,
)
from deltaconv_kernels.triton.pyramid_fwd import conv_meta, conv_weight, padded_buffer, stage_source


@triton.jit
def _gate_bwd_kernel(src_ptr, s_b, s_h, w_ptr, g_ptr, g_b, g_h, g_w, g_c, gd_ptr, d_b, d_h,
                     map_h, map_w, out_h, out_w, span_h, span_w, gate_scale,
                     S_W: tl.constexpr, HALF: tl.constexpr, K: tl.constexpr, SIGMOID: tl.constexpr,
                     EVEN_C: tl.constexpr, PACKED: tl.constexpr, UPSAMPLED: tl.constexpr, BLOCK_C: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """gd (zero-bordered fp32, pixel stride 2*HALF) = gate backward of one tile, the conv recomputed from src.
    gz is grad_out at the tile (UPSAMPLED false) or its bilinear-upsample backward from the out_h x out_w grad."""
    b64, h0, w0, c0, tile, ca, cmask = conv_program(src_ptr, s_b, s_h, map_h, map_w, S_W, HALF, BLOCK_H, BLOCK_W,
                                                    BLOCK_C)
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    # Index math in int32 (maps up to 32K a side: the launcher checks); only addresses are 64-bit.
    oh = h0 + p // BLOCK_W
    ow = w0 + p % BLOCK_W
    ok = (oh < map_h) & (ow < map_w)
    m = ok[:, None] & cmask[None, :]
    g_base = g_ptr + b64 * g_b + ca.to(tl.int64)[None, :] * g_c
    if UPSAMPLED:
        # The output rows that reach row oh (span_h of them at most, exact on the host), the same for columns.
        # The index math runs on [BLOCK_P, 1] columns of the gathered tile's own layout: nothing inside the loops
        # changes layout (a 1-D pixel vector broadcast per tap went through shared memory, with barriers).
        oh2 = oh[:, None]
        ow2 = ow[:, None]
        y_lo = first_reaching_row(oh2, map_h, out_h)
        x_lo = first_reaching_row(ow2, map_w, out_w)
        gz = tl.zeros([BLOCK_H * BLOCK_W, BLOCK_C], dtype=tl.float32)
        for dy in range(0, span_h):
            y = y_lo + dy
            wy = tl.where(y < out_h, bilinear_weight(y, oh2, map_h, out_h), 0.0)
            y_off = y.to(tl.int64) * g_h
            for dx in range(0, span_w):
                x = x_lo + dx
                wt = wy * tl.where(x < out_w, bilinear_weight(x, ow2, map_w, out_w), 0.0)
                v = tl.load(g_base + (y_off + x.to(tl.int64) * g_w), mask=m & (wt != 0.0), other=0.0)
                gz += v.to(tl.float32) * wt
    else:
        gz = tl.load(g_base + (oh.to(tl.int64) * g_h + ow.to(tl.int64) * g_w)[:, None], mask=m,
                     other=0.0).to(tl.float32)
    # gz first: its gather then does not hold registers beside the two conv accumulators.
    a, g = conv_pair_tile(tile, s_h, w_ptr + c0, cmask, S_W, HALF, K, EVEN_C, PACKED, BLOCK_H, BLOCK_W, BLOCK_C)
    if SIGMOID:
        sig = 1.0 / (1.0 + tl.exp(-g))
        grad_a = gz * sig
        grad_g = gz * a * sig * (1.0 - sig)
    else:
        grad_a = gz * g * gate_scale
        grad_g = gz * a * gate_scale
    P: tl.constexpr = K // 2
    out = gd_ptr + b64 * d_b + ((oh + P).to(tl.int64) * d_h + (ow + P) * (2 * HALF))[:, None] + ca[None, :]
    tl.store(out, grad_a, mask=m)
    tl.store(out + HALF, grad_g, mask=m)


@triton.jit
def _conv_input_bwd_kernel(src_ptr, s_b, s_h, w_ptr, out_ptr, o_b, o_h, o_w, map_h, map_w,
                           S_W: tl.constexpr, HALF: tl.constexpr, K: tl.constexpr, EVEN_C: tl.constexpr,
                           PACKED: tl.constexpr, ACCUMULATE: tl.constexpr, BLOCK_C: tl.constexpr,
                           BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """out (+)= conv(gd, flipped kernel) over all 2*HALF channels: gd zero-bordered fp32, out fp32 [B, h, w, 2*HALF]
    (channels contiguous)."""
    b64, h0, w0, c0, tile, ca, cmask = conv_program(src_ptr, s_b, s_h, map_h, map_w, S_W, HALF, BLOCK_H, BLOCK_W,
                                                    BLOCK_C)
    acc_a, acc_g = conv_pair_tile(tile, s_h, w_ptr + c0, cmask, S_W, HALF, K, EVEN_C, PACKED, BLOCK_H, BLOCK_W,
                                  BLOCK_C)
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    oh = h0 + p // BLOCK_W
    ow = w0 + p % BLOCK_W
    m = ((oh < map_h) & (ow < map_w))[:, None] & cmask[None, :]
    out = out_ptr + b64 * o_b + (oh.to(tl.int64) * o_h + ow.to(tl.int64) * o_w)[:, None] + ca[None, :]
    if ACCUMULATE:
        acc_a += tl.load(out, mask=m, other=0.0)
        acc_g += tl.load(out + HALF, mask=m, other=0.0)
    tl.store(out, acc_a, mask=m)
    tl.store(out + HALF, acc_g, mask=m)


@triton.jit
def _tap_offsets(T0: tl.constexpr, T: tl.constexpr, K: tl.constexpr, s_h, S_W: tl.constexpr, c):
    """Source offsets [T, BLOCK_C] of taps T0 .. T0 + T - 1 (a tap past K*K re-reads the last one, not stored)."""
    t = tl.minimum(T0 + tl.arange(0, T), K * K - 1)
    return ((t // K) * s_h + (t % K) * S_W)[:, None] + c[None, :]


@triton.jit
def _tap_products(src_px, offs, g, cmask, EVEN_C: tl.constexpr):
    if EVEN_C:
        v = tl.load(src_px + offs)
    else:
        v = tl.load(src_px + offs, mask=cmask[None, :], other=0.0)
    return v.to(tl.float32) * g[None, :]


@triton.jit
def _store_taps(part, acc, T0: tl.constexpr, T: tl.constexpr, K: tl.constexpr, CI: tl.constexpr, c, cmask):
    tap = T0 + tl.arange(0, T)
    tl.store(part + tap[:, None] * CI + c[None, :], acc, mask=(tap < K * K)[:, None] & cmask[None, :])


@triton.jit
def _weight_grad_kernel(gd_ptr, d_b, d_h, src_ptr, s_b, s_h, part_ptr, map_w, map_h, rows_per_split, splits,
                        S_W: tl.constexpr, CI: tl.constexpr, K: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
                        T3: tl.constexpr, T4: tl.constexpr, EVEN_C: tl.constexpr, BLOCK_C: tl.constexpr):
    """part[b * splits + split, tap, c] = sum over the pixels q of rows [split * rows_per_split, ...) of image b of
    gd[q, c] * src[q + tap, c]. The K*K taps of the channel block accumulate at once in up to four register tiles
    [T_i, BLOCK_C] of consecutive taps (`launch.tap_pieces`: powers of two summing to K*K, or just above it).
    gd and src are zero-bordered with pixel stride S_W = CI; gd's interior starts at (K//2, K//2)."""
    pid = tl.program_id(0)
    b = (pid // splits).to(tl.int64)
    y0 = (pid % splits) * rows_per_split
    y1 = tl.minimum(y0 + rows_per_split, map_h)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < CI
    P: tl.constexpr = K // 2
    src_row = src_ptr + b * s_b + y0.to(tl.int64) * s_h
    gd_row = gd_ptr + b * d_b + (y0 + P).to(tl.int64) * d_h + (P * S_W) + c
    offs1 = _tap_offsets(0, T1, K, s_h, S_W, c)
    acc1 = tl.zeros([T1, BLOCK_C], dtype=tl.float32)
    if T2 > 0:
        offs2 = _tap_offsets(T1, T2, K, s_h, S_W, c)
        acc2 = tl.zeros([T2, BLOCK_C], dtype=tl.float32)
    if T3 > 0:
        offs3 = _tap_offsets(T1 + T2, T3, K, s_h, S_W, c)
        acc3 = tl.zeros([T3, BLOCK_C], dtype=tl.float32)
    if T4 > 0:
        offs4 = _tap_offsets(T1 + T2 + T3, T4, K, s_h, S_W, c)
        acc4 = tl.zeros([T4, BLOCK_C], dtype=tl.float32)
    for _y in range(y0, y1):
        src_px = src_row
        gd_px = gd_row
        for _x in range(0, map_w):
            if EVEN_C:
                g = tl.load(gd_px)
            else:
                g = tl.load(gd_px, mask=cmask, other=0.0)
            acc1 += _tap_products(src_px, offs1, g, cmask, EVEN_C)
            if T2 > 0:
                acc2 += _tap_products(src_px, offs2, g, cmask, EVEN_C)
            if T3 > 0:
                acc3 += _tap_products(src_px, offs3, g, cmask, EVEN_C)
            if T4 > 0:
                acc4 += _tap_products(src_px, offs4, g, cmask, EVEN_C)
            src_px += S_W
            gd_px += S_W
        src_row += s_h
        gd_row += d_h
    part = part_ptr + pid.to(tl.int64) * (K * K) * CI
    _store_taps(part, acc1, 0, T1, K, CI, c, cmask)
    if T2 > 0:
        _store_taps(part, acc2, T1, T2, K, CI, c, cmask)
    if T3 > 0:
        _store_taps(part, acc3, T1 + T2, T3, K, CI, c, cmask)
    if T4 > 0:
        _store_taps(part, acc4, T1 + T2 + T3, T4, K, CI, c, cmask)


@triton.jit
def _pool_bwd_kernel(gp_ptr, out_ptr, in_h, in_w, map_h, map_w, channels, ACCUMULATE: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[b, y, x, c] (+)= sum over the (at most 2 x 2) adaptive windows holding (y, x) of gp / window size.
    Window i holds y iff start(i) <= y < end(i); with map <= in only i = y*map//in and the next can."""
    b, oy, ox = tile_coords(tl.program_id(0), in_h, in_w, BLOCK_H, BLOCK_W)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < channels
    ok = (oy < in_h) & (ox < in_w)
    acc = tl.zeros([BLOCK_H * BLOCK_W, BLOCK_C], dtype=tl.float32)
    for di in tl.static_range(2):
        i = (oy * map_h) // in_h + di
        ys, ye = adaptive_window(i, in_h, map_h)
        i_ok = (i < map_h) & (ys <= oy) & (oy < ye)
        for dj in tl.static_range(2):
            j = (ox * map_w) // in_w + dj
            xs, xe = adaptive_window(j, in_w, map_w)
            wok = ok & i_ok & (j < map_w) & (xs <= ox) & (ox < xe)
            inv = 1.0 / ((ye - ys) * (xe - xs)).to(tl.float32)
            src = ((b * map_h + i.to(tl.int64)) * map_w + j) * channels
            v = tl.load(gp_ptr + src[:, None] + c[None, :], mask=wok[:, None] & cmask[None, :], other=0.0)
            acc += v * inv[:, None]
    m = ok[:, None] & cmask[None, :]
    out = out_ptr + (((b * in_h + oy.to(tl.int64)) * in_w + ox) * channels)[:, None] + c[None, :]
    if ACCUMULATE:
        acc += tl.load(out, mask=m, other=0.0)
    tl.store(out, acc, mask=m)


def _conv_grid(b: int, h: int, w: int, meta: dict, tile: dict) -> tuple[int, int]:
    return (b * launch.cdiv(h, tile["BLOCK_H"]) * launch.cdiv(w, tile["BLOCK_W"]),
            launch.cdiv(meta["HALF"], meta["BLOCK_C"]))


def weight_grad(gd: torch.Tensor, src: torch.Tensor, k: int, map_h: int, map_w: int) -> torch.Tensor:
    """fp32 [K, K, Ci] weight gradient from the zero-bordered gd (fp32) and conv input src of one stage."""
    b, ci = gd.shape[0], gd.shape[-1]
    block_c = launch.channel_block(ci, launch.WGRAD_BLOCK_C)
    n_cb = launch.cdiv(ci, block_c)
    pieces = launch.tap_pieces(k * k)
    warps = launch.wgrad_warps(sum(pieces), block_c, src.element_size())
    # Enough warps to fill the GPU (counted in 4-warp programs: small programs get more splits), each split summing
    # at least ~256 pixels before it writes its partial.
    splits = launch.split_count(map_h, max(1, b * n_cb * warps // 4), gd.device, launch.cdiv(256, map_w))
    rows = launch.cdiv(map_h, splits)
    splits = launch.cdiv(map_h, rows)
    part = torch.empty((b * splits, k * k, ci), dtype=torch.float32, device=gd.device)
    launch.run(_weight_grad_kernel, (b * splits, n_cb), gd, gd.stride(0), gd.stride(1), src, src.stride(0),
               src.stride(1), part, map_w, map_h, rows, splits, S_W=src.stride(2), CI=ci, K=k,
               T1=pieces[0], T2=pieces[1], T3=pieces[2], T4=pieces[3], EVEN_C=ci % block_c == 0, BLOCK_C=block_c,
               num_warps=warps)
    return part.sum(dim=0).view(k, k, ci)


def _stage_backward(grad_out, u, weight, low_h, low_w, sigmoid_gate, gate_scale, grad_acc, accumulate):
    """Add one stage's contribution to grad_acc (fp32 [B, H, W, Ci]); return its fp32 weight gradient."""
    b, h, w, ci = u.shape
    k = weight.shape[0]
    pooled = (low_h, low_w) != (h, w)
    src = stage_source(u, k, low_h, low_w)
    meta = conv_meta(src, k)
    gate_tile = launch.FIXED_CONV_META
    gd = padded_buffer(b, low_h, low_w, ci, k, torch.float32, u.device)
    span_h, span_w = (launch.upsample_span(low_h, h), launch.upsample_span(low_w, w)) if pooled else (1, 1)
    launch.run(_gate_bwd_kernel, _conv_grid(b, low_h, low_w, meta, gate_tile), src, src.stride(0), src.stride(1),
               conv_weight(weight, meta), grad_out, *grad_out.stride(), gd,
               gd.stride(0), gd.stride(1), low_h, low_w, h, w, span_h, span_w, float(gate_scale),
               SIGMOID=bool(sigmoid_gate), UPSAMPLED=pooled, **meta, **gate_tile)
    grad_src = torch.empty((b, low_h, low_w, ci), dtype=torch.float32, device=u.device) if pooled else grad_acc
    gd_meta = conv_meta(gd, k)
    launch.run(_conv_input_bwd_kernel, _conv_grid(b, low_h, low_w, gd_meta, launch.FIXED_CONV_META), gd, gd.stride(0),
               gd.stride(1), conv_weight(weight.flip(0, 1), gd_meta), grad_src,
               grad_src.stride(0), grad_src.stride(1), grad_src.stride(2), low_h, low_w,
               ACCUMULATE=accumulate and not pooled, **gd_meta, **launch.FIXED_CONV_META)
    if pooled:
        bh, bw, bc = launch.spatial_tile(h, w, ci)
        launch.run(_pool_bwd_kernel, (b * launch.cdiv(h, bh) * launch.cdiv(w, bw), launch.cdiv(ci, bc)), grad_src,
                   grad_acc, h, w, low_h, low_w, ci, ACCUMULATE=accumulate, BLOCK_H=bh, BLOCK_W=bw, BLOCK_C=bc)
    return weight_grad(gd, src, k, low_h, low_w)


def pyramid_backward(grad_out: torch.Tensor, u: torch.Tensor, weights, scales, sigmoid_gate: bool,
                     gate_scale: float):
    """(grad_u in u.dtype, [grad_w_i in weights[i].dtype]) of `pyramid_forward`; grad_out may be strided."""
    launch.check_tensor(u, "u")
    launch.check_map(u, "u")
    launch.check_tensor(grad_out, "grad_out", u.device)
    b, h, w, ci = u.shape
    half = ci // 2
    if tuple(grad_out.shape) != (b, h, w, half * len(scales)):
        raise ValueError(f"grad_out must be [{b}, {h}, {w}, {half * len(scales)}], got {tuple(grad_out.shape)}")
    grad_acc = torch.empty((b, h, w, ci), dtype=torch.float32, device=u.device)
    grad_ws = []
    for i, (weight, s) in enumerate(zip(weights, scales)):
        launch.check_tensor(weight, f"weights[{i}]", u.device)
        go = grad_out[..., i * half:(i + 1) * half]
        gw = _stage_backward(go, u, weight, *pooled_size(h, w, s), sigmoid_gate, gate_scale, grad_acc, i > 0)
        grad_ws.append(gw.to(weight.dtype))
    return grad_acc.to(u.dtype), grad_ws
