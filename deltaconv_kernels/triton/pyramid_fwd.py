"""Forward of the fused pyramid (docs/DESIGN.md §2). Per stage:
  s = 1: u is copied into a zero-bordered buffer; the conv + gate kernel writes z straight into the concat slice;
  s < 1: u is pooled once into a zero-bordered fp32 buffer (a quarter of u at s=0.5); the same conv + gate kernel
         writes a small fp32 low-res z; the bilinear kernel upsamples it into the concat slice.
The zero border makes every conv tap an unmasked load at a compile-time offset; the pre-gate tensors are never
written to memory."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltaconv_kernels.geometry import pooled_size
from deltaconv_kernels.triton import launch
from deltaconv_kernels.triton.index_math import (
    adaptive_window,
    bilinear_taps,
    conv_pair_tile,
    conv_program,
    gate_forward,
    tile_coords,
)


@triton.jit
def _conv_gate_kernel(src_ptr, s_b, s_h, w_ptr, out_ptr, o_b, o_h, o_w, o_c, map_h, map_w, gate_scale,
                      S_W: tl.constexpr, HALF: tl.constexpr, K: tl.constexpr, SIGMOID: tl.constexpr,
                      EVEN_C: tl.constexpr, PACKED: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr,
                      BLOCK_W: tl.constexpr):
    """z = gate(conv(src)) on a map_h x map_w map held zero-bordered in `src`; grid (B * tiles, channel blocks)."""
    b64, h0, w0, c0, tile, ca, cmask = conv_program(src_ptr, s_b, s_h, map_h, map_w, S_W, HALF, BLOCK_H, BLOCK_W,
                                                    BLOCK_C)
    acc_a, acc_g = conv_pair_tile(tile, s_h, w_ptr + c0, cmask, S_W, HALF, K, EVEN_C, PACKED, BLOCK_H, BLOCK_W,
                                  BLOCK_C)
    z = gate_forward(acc_a, acc_g, gate_scale, SIGMOID)
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    oh = h0 + p // BLOCK_W
    ow = w0 + p % BLOCK_W
    m = ((oh < map_h) & (ow < map_w))[:, None] & cmask[None, :]
    pix = b64 * o_b + oh.to(tl.int64) * o_h + ow.to(tl.int64) * o_w
    tl.store(out_ptr + pix[:, None] + ca.to(tl.int64)[None, :] * o_c, z.to(out_ptr.dtype.element_ty), mask=m)


_conv_gate_autotuned = triton.autotune(
    configs=launch.conv_configs(),
    # Everything that changes the compiled kernel (the tensors' dtypes are added by the autotuner).
    key=["map_h", "map_w", "S_W", "HALF", "K", "SIGMOID", "EVEN_C", "PACKED", "BLOCK_C"],
)(_conv_gate_kernel)


@triton.jit
def _pool_kernel(u_ptr, s_b, s_h, s_w, s_c, p_ptr, p_b, p_h, in_h, in_w, map_h, map_w, channels, max_wh, max_ww,
                 PAD: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """Adaptive average of u (any strides) into the interior of a zero-bordered fp32 buffer (border PAD, pixel
    stride = channels). The window loops run at run time: the compiled kernel does not depend on the window size."""
    b, oh, ow = tile_coords(tl.program_id(0), map_h, map_w, BLOCK_H, BLOCK_W)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < channels
    ok = (oh < map_h) & (ow < map_w)
    ys, ye = adaptive_window(oh, in_h, map_h)
    xs, xe = adaptive_window(ow, in_w, map_w)
    acc = tl.zeros([BLOCK_H * BLOCK_W, BLOCK_C], dtype=tl.float32)
    base = u_ptr + b * s_b + c.to(tl.int64)[None, :] * s_c
    for dy in range(0, max_wh):
        y = ys + dy
        for dx in range(0, max_ww):
            x = xs + dx
            m = (ok & (y < ye) & (x < xe))[:, None] & cmask[None, :]
            off = y.to(tl.int64) * s_h + x.to(tl.int64) * s_w
            acc += tl.load(base + off[:, None], mask=m, other=0.0).to(tl.float32)
    acc = acc / ((ye - ys) * (xe - xs)).to(tl.float32)[:, None]
    out = b * p_b + (oh + PAD).to(tl.int64) * p_h + (ow + PAD).to(tl.int64) * channels
    tl.store(p_ptr + out[:, None] + c[None, :], acc, mask=ok[:, None] & cmask[None, :])


@triton.jit
def _upsample_kernel(z_ptr, z_b, z_h, z_w, out_ptr, o_b, o_h, o_w, o_c, low_h, low_w, out_h, out_w, channels,
                     BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """Bilinear (align_corners=False) upsample of a contiguous-channel fp32 map into a strided output."""
    b, oh, ow = tile_coords(tl.program_id(0), out_h, out_w, BLOCK_H, BLOCK_W)
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


def padded_buffer(b: int, h: int, w: int, channels: int, k: int, dtype, device) -> torch.Tensor:
    """Zeroed [B, padded h, padded w, channels] buffer for a K x K conv over an h x w map (interior at K//2)."""
    return torch.zeros((b, launch.padded_size(h, k), launch.padded_size(w, k), channels), dtype=dtype, device=device)


def stage_source(u: torch.Tensor, k: int, map_h: int, map_w: int) -> torch.Tensor:
    """The conv input of a stage, zero-bordered: a copy of u (s = 1, u's dtype) or u pooled once to map_h x map_w
    (s < 1, fp32: the pooled means are not rounded before the conv)."""
    b, h, w, ci = u.shape
    pad = k // 2
    if (map_h, map_w) == (h, w):
        src = padded_buffer(b, h, w, ci, k, u.dtype, u.device)
        src[:, pad:pad + h, pad:pad + w].copy_(u)
        return src
    src = padded_buffer(b, map_h, map_w, ci, k, torch.float32, u.device)
    bh, bw, bc = launch.spatial_tile(map_h, map_w, ci)
    grid = (b * launch.cdiv(map_h, bh) * launch.cdiv(map_w, bw), launch.cdiv(ci, bc))
    launch.run(_pool_kernel, grid, u, *u.stride(), src, src.stride(0), src.stride(1), h, w, map_h, map_w, ci,
               launch.max_window(h, map_h), launch.max_window(w, map_w), PAD=pad, BLOCK_H=bh, BLOCK_W=bw, BLOCK_C=bc)
    return src


def conv_meta(src: torch.Tensor, k: int) -> dict:
    """Constexprs of the conv kernels for a zero-bordered source [B, Hp, Wp, Ci] (contiguous). PACKED: a bf16 source
    read as words of two channels (needs whole, even channel blocks)."""
    half = src.shape[-1] // 2
    bc = launch.channel_block(half)
    even = half % bc == 0
    return {"S_W": src.stride(2), "HALF": half, "K": k, "EVEN_C": even,
            "PACKED": src.dtype == torch.bfloat16 and even and bc % 2 == 0, "BLOCK_C": bc}


def conv_weight(weight: torch.Tensor, meta: dict) -> torch.Tensor:
    """The fp32 contiguous [K, K, Ci] kernel the conv kernels read (converted once here, not at every tap); for a
    PACKED source each BLOCK_C block of channels is reordered to its even channels, then its odd ones."""
    w32 = weight.to(torch.float32).contiguous()
    if not meta["PACKED"]:
        return w32
    k, _, ci = w32.shape
    bc = meta["BLOCK_C"]
    return w32.view(k, k, ci // bc, bc // 2, 2).transpose(-1, -2).reshape(k, k, ci).contiguous()


def conv_gate(src: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, map_h: int, map_w: int,
              sigmoid_gate: bool, gate_scale: float) -> None:
    """Launch z = gate(conv(src)) into `out` [B, map_h, map_w, Ci/2] (any strides); `src` from `stage_source`,
    `weight` the stage's [K, K, Ci] kernel."""
    b = src.shape[0]
    meta = conv_meta(src, weight.shape[0])

    def grid(m):
        return (b * triton.cdiv(map_h, m["BLOCK_H"]) * triton.cdiv(map_w, m["BLOCK_W"]),
                triton.cdiv(meta["HALF"], meta["BLOCK_C"]))

    launch.run(_conv_gate_autotuned, grid, src, src.stride(0), src.stride(1), conv_weight(weight, meta), out,
               *out.stride(),
               map_h, map_w, float(gate_scale), SIGMOID=bool(sigmoid_gate), **meta)


def upsample(z_low: torch.Tensor, out: torch.Tensor) -> None:
    """Launch the bilinear upsample of fp32 `z_low` [B, h, w, C] (channels contiguous) into `out` [B, H, W, C]."""
    b, low_h, low_w, c = z_low.shape
    _, out_h, out_w, _ = out.shape
    bh, bw, bc = launch.spatial_tile(out_h, out_w, c)
    grid = (b * launch.cdiv(out_h, bh) * launch.cdiv(out_w, bw), launch.cdiv(c, bc))
    launch.run(_upsample_kernel, grid, z_low, z_low.stride(0), z_low.stride(1), z_low.stride(2), out, *out.stride(),
               low_h, low_w, out_h, out_w, c, BLOCK_H=bh, BLOCK_W=bw, BLOCK_C=bc)


def pyramid_forward(u: torch.Tensor, weights, scales, sigmoid_gate: bool, gate_scale: float) -> torch.Tensor:
    """All stages into one concat buffer `[B, H, W, Ci/2 * S]` in u.dtype (u may have any strides)."""
    launch.check_tensor(u, "u")
    launch.check_map(u, "u")
    b, h, w, ci = u.shape
    half = ci // 2
    out = torch.empty((b, h, w, half * len(scales)), dtype=u.dtype, device=u.device)
    for i, (weight, s) in enumerate(zip(weights, scales)):
        launch.check_tensor(weight, f"weights[{i}]", u.device)
        dst = out[..., i * half:(i + 1) * half]
        low_h, low_w = pooled_size(h, w, s)
        src = stage_source(u, weight.shape[0], low_h, low_w)
        if (low_h, low_w) == (h, w):
            conv_gate(src, weight, dst, h, w, sigmoid_gate, gate_scale)
            continue
        z_low = torch.empty((b, low_h, low_w, half), dtype=torch.float32, device=u.device)
        conv_gate(src, weight, z_low, low_h, low_w, sigmoid_gate, gate_scale)
        upsample(z_low, dst)
    return out
