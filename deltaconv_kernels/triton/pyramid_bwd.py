"""Backward of the fused pyramid: `grad_u` and every stage's weight gradient, all accumulated in fp32.

Per stage (fp32 scratch maps, never atomics, so results are bit-reproducible):
  s < 1: pool u -> p (low-res); upsample-backward grad_out -> gz (a gather: each low-res pixel sums the
         output pixels whose bilinear taps reach it); gate-backward with the conv recomputed -> gd;
         conv-input-backward gd -> gp; pool-backward gp -> grad_u (+=);
  s = 1: gate-backward reads u and grad_out directly -> gd; conv-input-backward gd -> grad_u (+=).
  Weight gradient: one program per (tap, pixel split, channel block) writes a partial sum; the partials are
  summed over splits by one torch reduction (fixed order).
grad_out is read through its strides: it is a channel slice of the concat gradient (the released code's bug).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltaconv_kernels.triton import launch
from deltaconv_kernels.triton.index_math import adaptive_window, bilinear_taps, conv_pair, tile_coords


@triton.jit
def _pool_kernel(u_ptr, s_b, s_h, s_w, s_c, p_ptr, in_h, in_w, map_h, map_w, channels,
                 MAXWH: tl.constexpr, MAXWW: tl.constexpr,
                 BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """p[b, i, j, c] = adaptive average of u (any strides) into a contiguous fp32 [B, map_h, map_w, C]."""
    b, oh, ow, _ = tile_coords(tl.program_id(0), tl.cdiv(map_h, BLOCK_H), tl.cdiv(map_w, BLOCK_W), BLOCK_H, BLOCK_W)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < channels
    ok = (oh < map_h) & (ow < map_w)
    ys, ye = adaptive_window(oh, in_h, map_h)
    xs, xe = adaptive_window(ow, in_w, map_w)
    acc = tl.zeros([BLOCK_H * BLOCK_W, BLOCK_C], dtype=tl.float32)
    base = u_ptr + b * s_b + c.to(tl.int64)[None, :] * s_c
    for dy in tl.static_range(MAXWH):
        y = ys + dy
        for dx in tl.static_range(MAXWW):
            x = xs + dx
            m = (ok & (y < ye) & (x < xe))[:, None] & cmask[None, :]
            off = y.to(tl.int64) * s_h + x.to(tl.int64) * s_w
            acc += tl.load(base + off[:, None], mask=m, other=0.0).to(tl.float32)
    acc = acc / ((ye - ys) * (xe - xs)).to(tl.float32)[:, None]
    out = (b * map_h + oh.to(tl.int64)) * map_w + ow
    tl.store(p_ptr + out[:, None] * channels + c[None, :], acc, mask=ok[:, None] & cmask[None, :])


@triton.jit
def _upsample_bwd_kernel(g_ptr, g_b, g_h, g_w, g_c, gz_ptr, low_h, low_w, out_h, out_w, channels,
                         NY: tl.constexpr, NX: tl.constexpr,
                         BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """gz[b, i, j, c] = sum over output pixels (y, x) of grad[b, y, x, c] times the bilinear weight that
    (y, x) gives to the low-res pixel (i, j). Candidates: NY rows from the first row whose source can reach
    i, each checked with the exact tap formula of the forward."""
    b, oi, oj, _ = tile_coords(tl.program_id(0), tl.cdiv(low_h, BLOCK_H), tl.cdiv(low_w, BLOCK_W), BLOCK_H, BLOCK_W)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < channels
    ok = (oi < low_h) & (oj < low_w)
    oi64 = oi.to(tl.int64)
    oj64 = oj.to(tl.int64)
    # Output rows with src >= i - 1: y >= ((2i - 1) * out - in) / (2 * in); one row of slack for rounding.
    y_lo = tl.maximum(((2 * oi64 - 1) * out_h - low_h) // (2 * low_h) - 1, 0)
    x_lo = tl.maximum(((2 * oj64 - 1) * out_w - low_w) // (2 * low_w) - 1, 0)
    acc = tl.zeros([BLOCK_H * BLOCK_W, BLOCK_C], dtype=tl.float32)
    base = g_ptr + b * g_b + c.to(tl.int64)[None, :] * g_c
    for dy in tl.static_range(NY):
        y = y_lo + dy
        i0, i1, ly = bilinear_taps(y, low_h, out_h)
        wy = tl.where(i0 == oi64, 1.0 - ly, 0.0) + tl.where(i1 == oi64, ly, 0.0)
        wy = tl.where(y < out_h, wy, 0.0)
        for dx in tl.static_range(NX):
            x = x_lo + dx
            j0, j1, lx = bilinear_taps(x, low_w, out_w)
            wx = tl.where(j0 == oj64, 1.0 - lx, 0.0) + tl.where(j1 == oj64, lx, 0.0)
            wx = tl.where(x < out_w, wx, 0.0)
            wt = wy * wx
            m = (ok & (wt != 0.0))[:, None] & cmask[None, :]
            v = tl.load(base + (y * g_h + x * g_w)[:, None], mask=m, other=0.0).to(tl.float32)
            acc += v * wt[:, None]
    out = (b * low_h + oi64) * low_w + oj64
    tl.store(gz_ptr + out[:, None] * channels + c[None, :], acc, mask=ok[:, None] & cmask[None, :])


@triton.jit
def _gate_bwd_kernel(src_ptr, s_b, s_h, s_w, s_c, w_ptr, w_h, w_w, w_c, gz_ptr, z_b, z_h, z_w, z_c, gd_ptr,
                     map_h, map_w, half, gate_scale, K: tl.constexpr, SIGMOID: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """Recompute a, g = conv(src) and write gd = [d z/d a, d z/d g] * gz as contiguous fp32 [B, h, w, 2*half]."""
    b, oh, ow, h0 = tile_coords(tl.program_id(0), tl.cdiv(map_h, BLOCK_H), tl.cdiv(map_w, BLOCK_W), BLOCK_H, BLOCK_W)
    ca = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = ca < half
    a, g = conv_pair(src_ptr + b * s_b, s_h, s_w, s_c, map_h, map_w, map_h, map_w, oh, ow, h0, ca, cmask, half,
                     w_ptr, w_h, w_w, w_c, K, False, 1, 1, BLOCK_H * BLOCK_W, BLOCK_C)
    m = ((oh < map_h) & (ow < map_w))[:, None] & cmask[None, :]
    pix = oh.to(tl.int64) * z_h + ow.to(tl.int64) * z_w
    gz = tl.load(gz_ptr + b * z_b + pix[:, None] + ca.to(tl.int64)[None, :] * z_c, mask=m, other=0.0).to(tl.float32)
    if SIGMOID:
        sig = 1.0 / (1.0 + tl.exp(-g))
        grad_a = gz * sig
        grad_g = gz * a * sig * (1.0 - sig)
    else:
        grad_a = gz * g * gate_scale
        grad_g = gz * a * gate_scale
    out = ((b * map_h + oh.to(tl.int64)) * map_w + ow)[:, None] * (2 * half) + ca[None, :]
    tl.store(gd_ptr + out, grad_a, mask=m)
    tl.store(gd_ptr + out + half, grad_g, mask=m)


@triton.jit
def _conv_input_bwd_kernel(gd_ptr, w_ptr, w_h, w_w, w_c, out_ptr, map_h, map_w, channels,
                           K: tl.constexpr, ACCUMULATE: tl.constexpr,
                           BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[b, y, x, c] (+)= sum_{kh, kw} gd[b, y - kh + K//2, x - kw + K//2, c] * w[kh, kw, c] (fp32, contiguous)."""
    b, oh, ow, h0 = tile_coords(tl.program_id(0), tl.cdiv(map_h, BLOCK_H), tl.cdiv(map_w, BLOCK_W), BLOCK_H, BLOCK_W)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < channels
    P: tl.constexpr = K // 2
    acc = tl.zeros([BLOCK_H * BLOCK_W, BLOCK_C], dtype=tl.float32)
    base = gd_ptr + b * map_h * map_w * channels + c[None, :]
    w_base = w_ptr + c.to(tl.int64) * w_c
    # Rows of gd a tile row y reads are y - kh + P; skip kernel rows that miss the map for every tile row.
    kh_lo = tl.maximum(0, h0 + P - (map_h - 1))
    kh_hi = tl.minimum(K, tl.max(oh, axis=0) + P + 1)
    for kh in range(kh_lo, kh_hi):
        iy = oh - kh + P
        y_ok = (iy >= 0) & (iy < map_h)
        row = iy.to(tl.int64) * map_w
        for kw in tl.static_range(K):
            ix = ow - kw + P
            m = (y_ok & (ix >= 0) & (ix < map_w))[:, None] & cmask[None, :]
            v = tl.load(base + ((row + ix) * channels)[:, None], mask=m, other=0.0)
            wv = tl.load(w_base + kh * w_h + kw * w_w, mask=cmask, other=0.0).to(tl.float32)
            acc += v * wv[None, :]
    m = ((oh < map_h) & (ow < map_w))[:, None] & cmask[None, :]
    out = out_ptr + (((b * map_h + oh.to(tl.int64)) * map_w + ow) * channels)[:, None] + c[None, :]
    if ACCUMULATE:
        acc += tl.load(out, mask=m, other=0.0)
    tl.store(out, acc, mask=m)


@triton.jit
def _weight_grad_kernel(gd_ptr, src_ptr, s_b, s_h, s_w, s_c, part_ptr, map_h, map_w, channels, n_pix, pix_per_split,
                        K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """part[split, tap, c] = sum over pixels q of its split of gd[q, c] * src[q shifted by tap, c] (fp32)."""
    tap = tl.program_id(0)
    split = tl.program_id(1)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < channels
    dh = tap // K - K // 2
    dw = tap % K - K // 2
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    c_off = c.to(tl.int64)[None, :] * s_c
    start = split.to(tl.int64) * pix_per_split
    for p0 in range(0, pix_per_split, BLOCK_P):
        r = p0 + tl.arange(0, BLOCK_P)
        q = start + r
        b = q // (map_h * map_w)
        y = (q // map_w) % map_h
        x = q % map_w
        iy = y + dh
        ix = x + dw
        ok = (r < pix_per_split) & (q < n_pix)
        src_ok = ok & (iy >= 0) & (iy < map_h) & (ix >= 0) & (ix < map_w)
        g = tl.load(gd_ptr + (q * channels)[:, None] + c[None, :], mask=src_ok[:, None] & cmask[None, :], other=0.0)
        off = b * s_b + iy * s_h + ix * s_w
        v = tl.load(src_ptr + off[:, None] + c_off, mask=src_ok[:, None] & cmask[None, :], other=0.0)
        acc += g * v.to(tl.float32)
    tl.store(part_ptr + (split * (K * K) + tap) * channels + c, tl.sum(acc, axis=0), mask=cmask)


@triton.jit
def _pool_bwd_kernel(gp_ptr, out_ptr, in_h, in_w, map_h, map_w, channels, ACCUMULATE: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[b, y, x, c] (+)= sum over the (at most 2 x 2) adaptive windows holding (y, x) of gp / window size.
    Window i holds y iff start(i) <= y < end(i); with map <= in only i = y*map//in and the next can."""
    b, oy, ox, _ = tile_coords(tl.program_id(0), tl.cdiv(in_h, BLOCK_H), tl.cdiv(in_w, BLOCK_W), BLOCK_H, BLOCK_W)
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


def _grid(b: int, h: int, w: int, channels: int) -> tuple[tuple[int, int], dict]:
    bh, bw, bc = launch.spatial_tile(h, w, channels)
    return (b * launch.cdiv(h, bh) * launch.cdiv(w, bw), launch.cdiv(channels, bc)), \
        {"BLOCK_H": bh, "BLOCK_W": bw, "BLOCK_C": bc}


def _weight_grad(gd: torch.Tensor, src: torch.Tensor, k: int) -> torch.Tensor:
    """fp32 [K, K, Ci] weight gradient from gd [B, h, w, Ci] (fp32 contiguous) and the conv input src."""
    b, h, w, ci = gd.shape
    n_pix = b * h * w
    if launch.interpreting():
        block_p, block_c, splits = min(launch.next_pow2(n_pix), 64), min(launch.next_pow2(ci), 64), 1
    else:
        block_p, block_c = 64, 32
        # ~4 programs per SM of an H100 in total, each summing at least 16 pixel blocks.
        splits = max(1, min(launch.cdiv(528, k * k * launch.cdiv(ci, block_c)), launch.cdiv(n_pix, 16 * block_p)))
    per = launch.cdiv(launch.cdiv(n_pix, splits), block_p) * block_p
    splits = launch.cdiv(n_pix, per)
    part = torch.empty((splits, k * k, ci), dtype=torch.float32, device=gd.device)
    _weight_grad_kernel[(k * k, splits, launch.cdiv(ci, block_c))](gd, src, *src.stride(), part, h, w, ci, n_pix, per,
                                                                   K=k, BLOCK_P=block_p, BLOCK_C=block_c)
    return part.sum(dim=0).view(k, k, ci)


def _stage_backward(grad_out, u, weight, low_h, low_w, sigmoid_gate, gate_scale, grad_acc, accumulate):
    """Add one stage's contribution to grad_acc (fp32 [B, H, W, Ci]); return its fp32 weight gradient."""
    b, h, w, ci = u.shape
    half = ci // 2
    k = weight.shape[0]
    dev = u.device
    pooled = (low_h, low_w) != (h, w)
    if pooled:
        src = torch.empty((b, low_h, low_w, ci), dtype=torch.float32, device=dev)
        grid, tiles = _grid(b, low_h, low_w, ci)
        _pool_kernel[grid](u, *u.stride(), src, h, w, low_h, low_w, ci, MAXWH=launch.max_window(h, low_h),
                           MAXWW=launch.max_window(w, low_w), **tiles)
        gz = torch.empty((b, low_h, low_w, half), dtype=torch.float32, device=dev)
        grid, tiles = _grid(b, low_h, low_w, half)
        _upsample_bwd_kernel[grid](grad_out, *grad_out.stride(), gz, low_h, low_w, h, w, half,
                                   NY=2 * h // low_h + 3, NX=2 * w // low_w + 3, **tiles)
    else:
        src, gz = u, grad_out
    gd = torch.empty((b, low_h, low_w, ci), dtype=torch.float32, device=dev)
    grid, tiles = _grid(b, low_h, low_w, half)
    _gate_bwd_kernel[grid](src, *src.stride(), weight, *weight.stride(), gz, *gz.stride(), gd, low_h, low_w, half,
                           float(gate_scale), K=k, SIGMOID=bool(sigmoid_gate), **tiles)
    grid, tiles = _grid(b, low_h, low_w, ci)
    if pooled:
        gp = torch.empty((b, low_h, low_w, ci), dtype=torch.float32, device=dev)
        _conv_input_bwd_kernel[grid](gd, weight, *weight.stride(), gp, low_h, low_w, ci, K=k, ACCUMULATE=False,
                                     **tiles)
        grid, tiles = _grid(b, h, w, ci)
        _pool_bwd_kernel[grid](gp, grad_acc, h, w, low_h, low_w, ci, ACCUMULATE=accumulate, **tiles)
    else:
        _conv_input_bwd_kernel[grid](gd, weight, *weight.stride(), grad_acc, h, w, ci, K=k, ACCUMULATE=accumulate,
                                     **tiles)
    return _weight_grad(gd, src, k)


def pyramid_backward(grad_out: torch.Tensor, u: torch.Tensor, weights, scales, sigmoid_gate: bool,
                     gate_scale: float):
    """(grad_u in u.dtype, [grad_w_i in weights[i].dtype]) of `pyramid_forward`; grad_out may be strided."""
    launch.check_tensor(u, "u")
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
        gw = _stage_backward(go, u, weight, int(h * s), int(w * s), sigmoid_gate, gate_scale, grad_acc, i > 0)
        grad_ws.append(gw.to(weight.dtype))
    return grad_acc.to(u.dtype), grad_ws
