"""Forward of the fused pyramid: per stage, one kernel for s = 1 (conv + gate straight into the concat slice),
two for s < 1 (pool on the fly + conv + gate into a small fp32 low-res map, then bilinear upsample into the
slice). The pooled and pre-gate tensors are never written to memory."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltaconv_kernels.triton import launch
from deltaconv_kernels.triton.index_math import bilinear_taps, conv_pair, gate_forward, tile_coords


@triton.jit
def _stage_conv_gate_kernel(src_ptr, s_b, s_h, s_w, s_c, w_ptr, w_h, w_w, w_c, out_ptr, o_b, o_h, o_w, o_c,
                            in_h, in_w, map_h, map_w, half, gate_scale,
                            K: tl.constexpr, POOL: tl.constexpr, MAXWH: tl.constexpr, MAXWW: tl.constexpr,
                            SIGMOID: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
                            BLOCK_C: tl.constexpr):
    """z = gate(conv(pool?(src))) on a map_h x map_w map; grid (B * row tiles * col tiles, channel tiles)."""
    n_hb = tl.cdiv(map_h, BLOCK_H)
    n_wb = tl.cdiv(map_w, BLOCK_W)
    b, oh, ow, h0 = tile_coords(tl.program_id(0), n_hb, n_wb, BLOCK_H, BLOCK_W)
    ca = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = ca < half
    acc_a, acc_g = conv_pair(src_ptr + b * s_b, s_h, s_w, s_c, map_h, map_w, in_h, in_w, oh, ow, h0, ca, cmask, half,
                             w_ptr, w_h, w_w, w_c, K, POOL, MAXWH, MAXWW, BLOCK_H * BLOCK_W, BLOCK_C)
    z = gate_forward(acc_a, acc_g, gate_scale, SIGMOID)
    pix = oh.to(tl.int64) * o_h + ow.to(tl.int64) * o_w
    m = ((oh < map_h) & (ow < map_w))[:, None] & cmask[None, :]
    tl.store(out_ptr + b * o_b + pix[:, None] + ca.to(tl.int64)[None, :] * o_c,
             z.to(out_ptr.dtype.element_ty), mask=m)


_stage_conv_gate_autotuned = triton.autotune(configs=launch.forward_configs(), key=["map_h", "map_w", "half", "K"])(
    _stage_conv_gate_kernel)


@triton.jit
def _upsample_kernel(z_ptr, z_b, z_h, z_w, out_ptr, o_b, o_h, o_w, o_c, low_h, low_w, out_h, out_w, channels,
                     BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """Bilinear (align_corners=False) upsample of a contiguous-channel fp32 map into a strided output."""
    n_hb = tl.cdiv(out_h, BLOCK_H)
    n_wb = tl.cdiv(out_w, BLOCK_W)
    b, oh, ow, _ = tile_coords(tl.program_id(0), n_hb, n_wb, BLOCK_H, BLOCK_W)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < channels
    i0, i1, ly = bilinear_taps(oh.to(tl.int64), low_h, out_h)
    j0, j1, lx = bilinear_taps(ow.to(tl.int64), low_w, out_w)
    m = ((oh < out_h) & (ow < out_w))[:, None] & cmask[None, :]
    base = z_ptr + b * z_b + c[None, :]
    v00 = tl.load(base + (i0 * z_h + j0 * z_w)[:, None], mask=m, other=0.0)
    v01 = tl.load(base + (i0 * z_h + j1 * z_w)[:, None], mask=m, other=0.0)
    v10 = tl.load(base + (i1 * z_h + j0 * z_w)[:, None], mask=m, other=0.0)
    v11 = tl.load(base + (i1 * z_h + j1 * z_w)[:, None], mask=m, other=0.0)
    ly = ly[:, None]
    lx = lx[:, None]
    # Rows first, then columns: the order of reference.bilinear_upsample.
    top = v00 * (1.0 - ly) + v10 * ly
    bot = v01 * (1.0 - ly) + v11 * ly
    z = top * (1.0 - lx) + bot * lx
    pix = oh.to(tl.int64) * o_h + ow.to(tl.int64) * o_w
    tl.store(out_ptr + b * o_b + pix[:, None] + c.to(tl.int64)[None, :] * o_c, z.to(out_ptr.dtype.element_ty), mask=m)


def conv_gate(src: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, map_h: int, map_w: int, sigmoid_gate: bool,
              gate_scale: float) -> None:
    """Launch z = gate(conv(pool(src) to map_h x map_w)) into `out` [B, map_h, map_w, Ci/2] (any strides)."""
    b, in_h, in_w, ci = src.shape
    half = ci // 2
    k = weight.shape[0]
    pool = (map_h, map_w) != (in_h, in_w)
    mwh = launch.max_window(in_h, map_h) if pool else 1
    mww = launch.max_window(in_w, map_w) if pool else 1
    args = (src, *src.stride(), weight, *weight.stride(), out, *out.stride(), in_h, in_w, map_h, map_w, half,
            float(gate_scale))
    meta = {"K": k, "POOL": pool, "MAXWH": mwh, "MAXWW": mww, "SIGMOID": bool(sigmoid_gate)}
    if launch.interpreting():
        bh, bw, bc = launch.spatial_tile(map_h, map_w, half)
        grid = (b * launch.cdiv(map_h, bh) * launch.cdiv(map_w, bw), launch.cdiv(half, bc))
        _stage_conv_gate_kernel[grid](*args, **meta, BLOCK_H=bh, BLOCK_W=bw, BLOCK_C=bc)
        return

    def grid(m):
        tiles = triton.cdiv(map_h, m["BLOCK_H"]) * triton.cdiv(map_w, m["BLOCK_W"])
        return (b * tiles, triton.cdiv(half, m["BLOCK_C"]))

    _stage_conv_gate_autotuned[grid](*args, **meta)


def upsample(z_low: torch.Tensor, out: torch.Tensor) -> None:
    """Launch the bilinear upsample of fp32 `z_low` [B, h, w, C] (channels contiguous) into `out` [B, H, W, C]."""
    b, low_h, low_w, c = z_low.shape
    _, out_h, out_w, _ = out.shape
    bh, bw, bc = launch.spatial_tile(out_h, out_w, c)
    grid = (b * launch.cdiv(out_h, bh) * launch.cdiv(out_w, bw), launch.cdiv(c, bc))
    _upsample_kernel[grid](z_low, z_low.stride(0), z_low.stride(1), z_low.stride(2), out, *out.stride(),
                           low_h, low_w, out_h, out_w, c, BLOCK_H=bh, BLOCK_W=bw, BLOCK_C=bc)


def pyramid_forward(u: torch.Tensor, weights, scales, sigmoid_gate: bool, gate_scale: float) -> torch.Tensor:
    """All stages into one concat buffer `[B, H, W, Ci/2 * S]` in u.dtype (u may have any strides)."""
    launch.check_tensor(u, "u")
    b, h, w, ci = u.shape
    half = ci // 2
    out = torch.empty((b, h, w, half * len(scales)), dtype=u.dtype, device=u.device)
    for i, (weight, s) in enumerate(zip(weights, scales)):
        launch.check_tensor(weight, f"weights[{i}]", u.device)
        dst = out[..., i * half:(i + 1) * half]
        low_h, low_w = int(h * s), int(w * s)
        if (low_h, low_w) == (h, w):
            conv_gate(u, weight, dst, h, w, sigmoid_gate, gate_scale)
            continue
        z_low = torch.empty((b, low_h, low_w, half), dtype=torch.float32, device=u.device)
        conv_gate(u, weight, z_low, low_h, low_w, sigmoid_gate, gate_scale)
        upsample(z_low, dst)
    return out
