"""The ΔConvBlock spec in plain PyTorch (docs/DESIGN.md §1), on channels-last tensors.

Every fast backend is tested against these functions. They are written from the formulas, not from the
library ops the tests compare them with: adaptive pooling as explicit window sums, bilinear upsampling
as an explicit two-tap gather. All arithmetic is fp32 (fp64 for fp64 inputs); the result is rounded to
the input dtype once, at the end. From the package it imports only `geometry.pooled_size`, the one definition
of the pooled size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from deltaconv_kernels.geometry import pooled_size

GATES = ("scaled", "sigmoid")  # the one definition (validation.py imports it)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype all internal math runs in: fp64 stays fp64, everything else is fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def default_gate_scale(inner_channels: int) -> float:
    """`sqrt(Ci/2)`: the released code divides by `(Ci/2)**-0.5`, i.e. multiplies by this."""
    return math.sqrt(inner_channels // 2)


def adaptive_window(o: int, in_size: int, out_size: int) -> tuple[int, int]:
    """PyTorch adaptive-pool window `[floor(o*in/out), ceil((o+1)*in/out))`, in exact integer math."""
    start = (o * in_size) // out_size
    end = -((-(o + 1) * in_size) // out_size)
    return start, end


def _pool_axis(t: torch.Tensor, dim: int, out_size: int) -> torch.Tensor:
    """Adaptive window means along `dim`: each output sums only its own window, so a non-finite value
    reaches only the windows that hold it (as in F.adaptive_avg_pool2d; a weight matrix would give 0*inf=NaN)."""
    in_size = t.shape[dim]
    means = []
    for o in range(out_size):
        s, e = adaptive_window(o, in_size, out_size)
        means.append(t.narrow(dim, s, e - s).sum(dim=dim, keepdim=True) / (e - s))
    return torch.cat(means, dim=dim)


def adaptive_avg_pool(t: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Adaptive average pooling of a channels-last `[B, H, W, C]` tensor (separable window averages)."""
    return _pool_axis(_pool_axis(t, 1, out_h), 2, out_w)


def bilinear_source(out_index: torch.Tensor, in_size: int, out_size: int):
    """align_corners=False source taps: `src = (dst + 0.5) * in/out - 0.5`, clamped at 0."""
    src = ((out_index.to(torch.float64) + 0.5) * (in_size / out_size) - 0.5).clamp(min=0.0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    lam = src - i0.to(torch.float64)
    return i0, i1, lam


def bilinear_upsample(t: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Bilinear upsampling (align_corners=False) of a channels-last `[B, h, w, C]` tensor to `[B, out_h, out_w, C]`."""
    _, h, w, _ = t.shape
    dev = t.device
    i0, i1, ly = bilinear_source(torch.arange(out_h, device=dev), h, out_h)
    ly = ly.to(t.dtype)[None, :, None, None]
    t = t.index_select(1, i0) * (1 - ly) + t.index_select(1, i1) * ly
    j0, j1, lx = bilinear_source(torch.arange(out_w, device=dev), w, out_w)
    lx = lx.to(t.dtype)[None, None, :, None]
    return t.index_select(2, j0) * (1 - lx) + t.index_select(2, j1) * lx


def depthwise_conv(t: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """K x K depthwise cross-correlation, stride 1, zero padding K//2, of `[B, H, W, C]` with a `[K, K, C]` kernel."""
    k = weight.shape[0]
    out = F.conv2d(t.permute(0, 3, 1, 2), weight.permute(2, 0, 1)[:, None], padding=k // 2, groups=t.shape[-1])
    return out.permute(0, 2, 3, 1)


def apply_gate(d: torch.Tensor, gate: str, gate_scale: float) -> torch.Tensor:
    """Split channels in halves `a | g`; `scaled`: `a * g * gate_scale`; `sigmoid`: `a * sigmoid(g)`."""
    a, g = d.chunk(2, dim=-1)
    if gate == "scaled":
        return a * g * gate_scale
    if gate == "sigmoid":
        return a * torch.sigmoid(g)
    raise ValueError(f"gate must be one of {GATES}, got {gate!r}")


def pyramid_stage(u: torch.Tensor, weight: torch.Tensor, scale: float, gate: str = "scaled",
                  gate_scale: float | None = None) -> torch.Tensor:
    """One pyramid stage: `[B, H, W, Ci]` -> `[B, H, W, Ci/2]` (pool, depthwise conv, gate, upsample)."""
    _, h, w, ci = u.shape
    if gate_scale is None:
        gate_scale = default_gate_scale(ci)
    cd = compute_dtype(u.dtype)
    t = u.to(cd)
    if scale != 1.0:
        t = adaptive_avg_pool(t, *pooled_size(h, w, scale))
    z = apply_gate(depthwise_conv(t, weight.to(cd)), gate, gate_scale)
    if scale != 1.0:
        z = bilinear_upsample(z, h, w)
    return z.to(u.dtype)


def pyramid(u: torch.Tensor, weights, scales, gate: str = "scaled", gate_scale: float | None = None) -> torch.Tensor:
    """All stages, concatenated in scale order along channels: `[B, H, W, Ci/2 * S]`."""
    return torch.cat([pyramid_stage(u, w, s, gate, gate_scale) for w, s in zip(weights, scales)], dim=-1)


def pooled_bias(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Pooled-bias branch: `Linear(mean_{H,W}(x))`, a per-sample bias `[B, C]` in x's dtype."""
    cd = compute_dtype(x.dtype)
    mean = x.to(cd).mean(dim=(1, 2))
    return F.linear(mean, weight.to(cd), bias.to(cd)).to(x.dtype)


def deltaconv_block(x: torch.Tensor, proj_in_w, proj_in_b, stage_weights, scales, proj_out_w, proj_out_b,
                    pool_w, pool_b, gate: str = "scaled", gate_scale: float | None = None) -> torch.Tensor:
    """The whole ΔConvBlock on `[B, H, W, C]`: in-projection, pyramid, out-projection, pooled bias."""
    u = F.linear(x, proj_in_w, proj_in_b)
    concat = pyramid(u, stage_weights, scales, gate, gate_scale)
    y = F.linear(concat, proj_out_w, proj_out_b)
    return y + pooled_bias(x, pool_w, pool_b)[:, None, None, :]
