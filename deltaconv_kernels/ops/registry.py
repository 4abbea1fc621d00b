"""Backend registry and choice (docs/DESIGN.md §3).

A kernel backend is a module with three functions, all on channels-last tensors:
  pyramid_forward(u, weights, scales, sigmoid_gate, gate_scale) -> [B, H, W, Ci/2 * S] in u.dtype
  pyramid_backward(grad_out, u, weights, scales, sigmoid_gate, gate_scale) -> (grad_u, [grad_w_i])
      grad_u in u.dtype, grad_w_i in weights[i].dtype (accumulated in fp32); grad_out may be strided
  pooled_bias(x, weight, bias) -> [B, C] in x.dtype
and a `probe()` returning None when usable or the reason it is not. (The `torch` backend is the reference,
called directly; see torch_backend.py.) Nothing falls back silently: an
automatic choice skips an unavailable backend, a forced one raises with every reason.
"""

from __future__ import annotations

import importlib
import os
from typing import NamedTuple

import torch

from deltaconv_kernels.runtime_env import triton_interpreting

ENV_VAR = "DELTACONV_BACKEND"
BACKENDS = ("triton", "cuda", "cpu", "torch")
# The order an automatic choice tries them in, per device type.
AUTO_ORDER = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpu", "torch")}
# Device types each backend takes tensors on (triton takes CPU tensors only under TRITON_INTERPRET=1).
DEVICES = {"triton": ("cuda", "cpu"), "cuda": ("cuda",), "cpu": ("cpu",), "torch": ("cuda", "cpu")}


class BackendInfo(NamedTuple):
    available: bool
    reason: str

    def __repr__(self) -> str:
        return f"available ({self.reason})" if self.available else f"unavailable: {self.reason}"


class BackendUnavailableError(RuntimeError):
    pass


_modules: dict = {}
_status: dict = {}


def _load(name: str):
    if name not in _modules:
        _modules[name] = importlib.import_module(f"deltaconv_kernels.ops.{name}_backend")
    return _modules[name]


def _probe(name: str) -> BackendInfo:
    if name not in _status:
        try:
            reason = _load(name).probe()
        except Exception as e:  # a broken backend is reported, never hidden
            reason = f"failed to load: {type(e).__name__}: {e}"
        _status[name] = BackendInfo(reason is None, _load_description(name) if reason is None else reason)
    return _status[name]


def _load_description(name: str) -> str:
    return getattr(_modules.get(name), "DESCRIPTION", name)


def available_backends() -> dict[str, BackendInfo]:
    """Every backend with whether it can run here and, if not, why."""
    return {name: _probe(name) for name in BACKENDS}


# Dynamo runs this eagerly at trace time and bakes the name into the graph: probing imports modules and
# queries devices, which must not be traced (a `fullgraph=True` compile as the very first call would fail).
@torch.compiler.assume_constant_result
def resolve(requested: str | None, device_type: str, dtype: torch.dtype | None = None) -> str:
    """The backend to run on tensors of `device_type`: `requested`, else $DELTACONV_BACKEND, else automatic.
    The kernel backends compute fp16/bf16/fp32; an automatic choice for fp64 (gradchecks) is the reference."""
    name = requested or os.environ.get(ENV_VAR) or None
    if name is None:
        order = ("torch",) if dtype == torch.float64 else AUTO_ORDER.get(device_type, ("torch",))
        for cand in order:
            if cand == "triton" and device_type != "cuda":
                continue
            if _probe(cand).available:
                return cand
        raise BackendUnavailableError(f"no backend can run on {device_type} tensors: {available_backends()}")
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} (or None for automatic), got {name!r}")
    info = _probe(name)
    if not info.available:
        reasons = "; ".join(f"{n}: {i!r}" for n, i in available_backends().items())
        raise BackendUnavailableError(f"backend {name!r} was forced but is unavailable: {info.reason}. "
                                      f"All backends: {reasons}")
    devices = DEVICES[name]
    if name == "triton" and device_type == "cpu" and not triton_interpreting():
        raise BackendUnavailableError("backend 'triton' takes CPU tensors only under TRITON_INTERPRET=1")
    if device_type not in devices:
        raise BackendUnavailableError(f"backend {name!r} cannot run on {device_type} tensors (it takes {devices})")
    return name


def get(name: str):
    """The module implementing backend `name` (after `resolve`)."""
    return _load(name)
