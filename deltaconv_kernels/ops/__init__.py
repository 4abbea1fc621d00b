"""Functional ops with argument checks and backend choice; see `registry` for the backend contract."""

from __future__ import annotations

import torch

from deltaconv_kernels import reference, validation
from deltaconv_kernels.ops import library  # noqa: F401  (registers torch.ops.deltaconv.*)
from deltaconv_kernels.ops.registry import (
    BackendInfo,
    BackendUnavailableError,
    available_backends,
    resolve,
)
from deltaconv_kernels.reference import default_gate_scale

__all__ = ["BackendInfo", "BackendUnavailableError", "available_backends", "pooled_bias", "pyramid", "resolve"]


def pyramid(u: torch.Tensor, weights, scales, gate: str = "scaled", gate_scale: float | None = None,
            backend: str | None = None) -> torch.Tensor:
    """Fused pyramid stages on channels-last `u` `[B, H, W, Ci]`: returns the concat buffer `[B, H, W, Ci/2*S]`."""
    validation.check_pyramid_args(u, weights, scales)
    validation.check_gate(gate)
    gate_scale = (default_gate_scale(u.shape[-1]) if gate_scale is None
                  else validation.check_gate_scale(gate_scale))
    name = resolve(backend, u.device.type, u.dtype)
    if name == "torch":
        return reference.pyramid(u, weights, scales, gate, gate_scale)
    return torch.ops.deltaconv.pyramid(u, list(weights), [float(s) for s in scales], gate == "sigmoid",
                                       float(gate_scale), name)


def pooled_bias(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Per-sample bias `[B, C]` = `weight @ mean_{H,W}(x) + bias` for channels-last `x` `[B, H, W, C]`."""
    validation.check_pooled_bias_args(x, weight, bias)
    name = resolve(backend, x.device.type, x.dtype)
    if name == "torch":
        return reference.pooled_bias(x, weight, bias)
    return torch.ops.deltaconv.pooled_bias(x, weight, bias, name)
