"""The `cpu` backend: the C++ CPU kernels of the extension `deltaconv_kernels._C` (csrc/cpu), called through
`torch.ops.deltaconv_C.*` (schemas in csrc/schema.cpp). See registry.py for the contract."""

from __future__ import annotations

import torch

DESCRIPTION = "C++ CPU kernels (deltaconv_kernels._C: at::vec + at::parallel_for)"

try:  # loading the library registers torch.ops.deltaconv_C; a failure is reported by probe()
    from deltaconv_kernels import _C  # noqa: F401
    _IMPORT_ERROR = None
except ImportError as e:
    _IMPORT_ERROR = e


def build_info() -> dict[str, str]:
    """`{"cpu": ISA, "cpu_ok": "0"|"1", "cuda": "0"|"1"}` of the built extension."""
    if _IMPORT_ERROR is not None:
        raise _IMPORT_ERROR
    return dict(kv.split("=", 1) for kv in torch.ops.deltaconv_C.build_info().split())


def probe() -> str | None:
    try:
        info = build_info()
    except ImportError as e:
        return (f"the C++ extension deltaconv_kernels._C is not built ({e}); build it with "
                "`pip install --no-build-isolation .` (without DELTACONV_SKIP_EXT)")
    except (AttributeError, RuntimeError) as e:
        return f"deltaconv_kernels._C imports but lacks its ops ({type(e).__name__}: {e}); rebuild it"
    missing = [op for op in ("pyramid_forward", "pyramid_backward", "pooled_bias")
               if not hasattr(torch.ops.deltaconv_C, op)]
    if missing:
        return f"deltaconv_kernels._C lacks the ops {missing}; rebuild it"
    if info.get("cpu_ok") != "1":
        return f"deltaconv_kernels._C was compiled for {info.get('cpu')} but this CPU lacks it; rebuild on this machine"
    return None


def pyramid_forward(u, weights, scales, sigmoid_gate, gate_scale):
    return torch.ops.deltaconv_C.pyramid_forward(u, list(weights), [float(s) for s in scales], bool(sigmoid_gate),
                                                 float(gate_scale))


def pyramid_backward(grad_out, u, weights, scales, sigmoid_gate, gate_scale):
    grads = torch.ops.deltaconv_C.pyramid_backward(grad_out, u, list(weights), [float(s) for s in scales],
                                                   bool(sigmoid_gate), float(gate_scale))
    return grads[0], list(grads[1:])


def pooled_bias(x, weight, bias):
    return torch.ops.deltaconv_C.pooled_bias(x, weight, bias)
