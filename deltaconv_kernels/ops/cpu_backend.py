"""The `cpu` backend: the C++ CPU kernels of the extension `deltaconv_kernels._C` (csrc/cpu), called through
`torch.ops.deltaconv_C.*` (schemas in csrc/schema.cpp). See registry.py for the contract."""

from __future__ import annotations

import torch

from deltaconv_kernels.ops import extension

DESCRIPTION = "C++ CPU kernels (deltaconv_kernels._C: at::vec + at::parallel_for, per instruction set)"


def probe() -> str | None:
    return extension.problem()


def pyramid_forward(u, weights, scales, sigmoid_gate, gate_scale):
    return torch.ops.deltaconv_C.pyramid_forward(u, list(weights), [float(s) for s in scales], bool(sigmoid_gate),
                                                 float(gate_scale))


def pyramid_backward(grad_out, u, weights, scales, sigmoid_gate, gate_scale):
    grads = torch.ops.deltaconv_C.pyramid_backward(grad_out, u, list(weights), [float(s) for s in scales],
                                                   bool(sigmoid_gate), float(gate_scale))
    return grads[0], list(grads[1:])


def pooled_bias(x, weight, bias):
    return torch.ops.deltaconv_C.pooled_bias(x, weight, bias)
