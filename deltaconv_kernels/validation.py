"""Argument checks shared by the functional ops and `DeltaConvBlock`: every error names the argument and
what was expected, so bad input never reaches a kernel (no segfaults, no silent wrong answers)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import torch

from deltaconv_kernels.reference import GATES

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_kernel_size(kernel_size, name: str = "kernel_size") -> int:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int):
        raise TypeError(f"{name} must be an int, got {type(kernel_size).__name__}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{name} must be a positive odd int (the conv is centred, padding K//2), got {kernel_size}")
    return kernel_size


def check_scales(scales) -> tuple[float, ...]:
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Iterable):
        raise TypeError(f"scales must be a sequence of floats such as (1.0, 0.5), got {type(scales).__name__} "
                        f"{scales!r}")
    scales = tuple(scales)
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, numbers.Real):
            raise TypeError(f"scales must hold real numbers, got {type(s).__name__} {s!r} in {scales}")
    scales = tuple(float(s) for s in scales)
    if not scales:
        raise ValueError("scales must name at least one scale, got an empty tuple")
    for s in scales:
        if not 0.0 < s <= 1.0:
            raise ValueError(f"scales must lie in (0, 1], got {s} in {scales}")
    return scales


def _check_real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def check_gate_scale(gate_scale) -> float:
    """A finite gate scale > 0 (the scaled gate multiplies by it)."""
    return _check_real(gate_scale, "gate_scale")


def check_gate(gate: str) -> str:
    if gate not in GATES:
        raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
    return gate


def check_inter_ratio(inter_ratio) -> float:
    """A finite inner-width ratio > 0."""
    return _check_real(inter_ratio, "inter_ratio")


def check_inner_channels(dim: int, inter_ratio: float) -> int:
    inter_ratio = check_inter_ratio(inter_ratio)
    ci = int(dim * inter_ratio)
    if ci < 2 or ci % 2:
        raise ValueError(f"int(dim * inter_ratio) = int({dim} * {inter_ratio}) = {ci} must be even and >= 2 "
                         "(the gate splits the inner channels in halves)")
    return ci


def check_float_tensor(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have a floating dtype in {FLOAT_DTYPES}, got {t.dtype}")


def check_size(size) -> tuple[int, int]:
    """`size=(H, W)`: exactly two positive ints (no floats: 3.9 is not silently 3)."""
    if isinstance(size, (str, bytes)) or not isinstance(size, Iterable):
        raise TypeError(f"size must be a pair (H, W) of ints, got {type(size).__name__} {size!r}")
    size = tuple(size)
    if len(size) != 2:
        raise ValueError(f"size must be a pair (H, W), got {len(size)} values {size}")
    out = []
    for v in size:
        if isinstance(v, bool) or not isinstance(v, (numbers.Integral, torch.SymInt)):
            if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point():
                v = int(v)
            else:
                raise TypeError(f"size must be a pair (H, W) of ints, got {size!r} ({type(v).__name__} {v!r})")
        if v < 1:
            raise ValueError(f"size must be a pair (H, W) of positive ints, got {size}")
        out.append(v if isinstance(v, torch.SymInt) else int(v))  # a SymInt stays symbolic under torch.compile
    return out[0], out[1]


def as_spatial(x: torch.Tensor, size, dim: int | None = None, name: str = "x") -> torch.Tensor:
    """View `[B, H, W, C]` or `[B, N, C]` (+ `size=(H, W)`) as `[B, H, W, C]` without a copy."""
    check_float_tensor(x, name)
    if x.dim() == 4:
        if size is not None and check_size(size) != tuple(x.shape[1:3]):
            raise ValueError(f"size={tuple(size)} disagrees with {name}.shape[1:3]={tuple(x.shape[1:3])}")
    elif x.dim() == 3:
        if size is None:
            raise ValueError(f"{name} is [B, N, C] {tuple(x.shape)}: pass size=(H, W) with H*W == N")
        h, w = check_size(size)
        if h * w != x.shape[1]:
            raise ValueError(f"size={(h, w)} gives H*W={h * w}, but {name} has N={x.shape[1]} tokens")
        x = x.unflatten(1, (h, w))
    else:
        raise ValueError(f"{name} must be [B, H, W, C] or [B, N, C], got rank {x.dim()} shape {tuple(x.shape)}")
    if dim is not None and x.shape[-1] != dim:
        raise ValueError(f"{name} has {x.shape[-1]} channels in its last dim, expected dim={dim}")
    if min(x.shape) < 1:
        raise ValueError(f"{name} must have B, H, W, C >= 1, got shape {tuple(x.shape)}")
    return x


def check_pyramid_args(u: torch.Tensor, weights, scales) -> None:
    check_float_tensor(u, "u")
    if u.dim() != 4:
        raise ValueError(f"u must be channels-last [B, H, W, Ci], got shape {tuple(u.shape)}")
    ci = u.shape[-1]
    if ci < 2 or ci % 2:
        raise ValueError(f"u must have an even number of channels Ci (gate halves), got {ci}")
    if len(weights) != len(scales):
        raise ValueError(f"weights and scales must have one entry per stage, got {len(weights)} and {len(scales)}")
    check_scales(scales)
    if min(u.shape) < 1:
        raise ValueError(f"u must have B, H, W >= 1, got shape {tuple(u.shape)}")
    for i, w in enumerate(weights):
        check_float_tensor(w, f"weights[{i}]")
        if w.dim() != 3 or w.shape[0] != w.shape[1] or w.shape[2] != ci:
            raise ValueError(f"weights[{i}] must be [K, K, Ci={ci}], got {tuple(w.shape)}")
        check_kernel_size(w.shape[0], f"weights[{i}] kernel size")
        if w.device != u.device:
            raise ValueError(f"weights[{i}] is on {w.device} but u is on {u.device}")


def check_pooled_bias_args(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    check_float_tensor(x, "x")
    if x.dim() != 4:
        raise ValueError(f"x must be channels-last [B, H, W, C], got shape {tuple(x.shape)}")
    c = x.shape[-1]
    check_float_tensor(weight, "weight")
    check_float_tensor(bias, "bias")
    if tuple(weight.shape) != (c, c) or tuple(bias.shape) != (c,):
        raise ValueError(f"pooled-bias weight must be [{c}, {c}] and bias [{c}], "
                         f"got {tuple(weight.shape)} and {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t.device != x.device:
            raise ValueError(f"pooled-bias {name} is on {t.device} but x is on {x.device}")
