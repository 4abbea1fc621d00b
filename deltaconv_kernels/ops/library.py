"""`torch.library` registrations (docs/DESIGN.md §3): schemas, fake kernels and autograd for the two fused ops.

The ops take the backend name as a string argument, resolved before the call, so `torch.compile` sees
one opaque op per backend choice and traces through every backend with `fullgraph=True`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deltaconv_kernels.ops import registry
from deltaconv_kernels.reference import compute_dtype

NAMESPACE = "deltaconv"


def _stage_channels(u: Tensor) -> int:
    return u.shape[-1] // 2


@torch.library.custom_op(f"{NAMESPACE}::pyramid", mutates_args=())
def pyramid(u: Tensor, weights: list[Tensor], scales: list[float], sigmoid_gate: bool, gate_scale: float,
            backend: str) -> Tensor:
    """All pyramid stages of a ΔConvBlock, concatenated: `[B, H, W, Ci]` -> `[B, H, W, Ci/2 * S]`."""
    return registry.get(backend).pyramid_forward(u, list(weights), list(scales), sigmoid_gate, gate_scale)


@pyramid.register_fake
def _(u, weights, scales, sigmoid_gate, gate_scale, backend):
    b, h, w, _ = u.shape
    return u.new_empty((b, h, w, _stage_channels(u) * len(scales)))


@torch.library.custom_op(f"{NAMESPACE}::pyramid_backward", mutates_args=())
def pyramid_backward(grad_out: Tensor, u: Tensor, weights: list[Tensor], scales: list[float], sigmoid_gate: bool,
                     gate_scale: float, backend: str) -> list[Tensor]:
    """`[grad_u, grad_w_0, ..., grad_w_{S-1}]` of `pyramid`."""
    grad_u, grad_ws = registry.get(backend).pyramid_backward(grad_out, u, list(weights), list(scales),
                                                             sigmoid_gate, gate_scale)
    return [grad_u, *grad_ws]


@pyramid_backward.register_fake
def _(grad_out, u, weights, scales, sigmoid_gate, gate_scale, backend):
    return [torch.empty_like(u), *(torch.empty_like(w) for w in weights)]


def _pyramid_setup(ctx, inputs, output):
    u, weights, scales, sigmoid_gate, gate_scale, backend = inputs
    ctx.save_for_backward(u, *weights)
    ctx.args = (list(scales), sigmoid_gate, gate_scale, backend)


def _pyramid_grad(ctx, grad_out):
    u, *weights = ctx.saved_tensors
    grads = torch.ops.deltaconv.pyramid_backward(grad_out, u, weights, *ctx.args)
    return grads[0], list(grads[1:]), None, None, None, None


pyramid.register_autograd(_pyramid_grad, setup_context=_pyramid_setup)


@torch.library.custom_op(f"{NAMESPACE}::pooled_bias", mutates_args=())
def pooled_bias(x: Tensor, weight: Tensor, bias: Tensor, backend: str) -> Tensor:
    """Pooled-bias branch: `weight @ mean_{H,W}(x) + bias` per sample, `[B, H, W, C]` -> `[B, C]`."""
    return registry.get(backend).pooled_bias(x, weight, bias)


@pooled_bias.register_fake
def _(x, weight, bias, backend):
    return x.new_empty((x.shape[0], weight.shape[0]))


def _pooled_setup(ctx, inputs, output):
    x, weight, bias, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.bias_dtype = bias.dtype


def _pooled_grad(ctx, grad):
    # The backward is two small GEMMs and a broadcast: torch does it, no kernel needed.
    x, weight = ctx.saved_tensors
    b, h, w, c = x.shape
    cd = compute_dtype(x.dtype)  # fp32, or fp64 for fp64 inputs (docs/DESIGN.md §1)
    g = grad.to(cd)
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = (g @ weight.to(cd) / (h * w)).to(x.dtype)[:, None, None, :].expand(b, h, w, c)
    if ctx.needs_input_grad[1]:
        grad_w = (g.t() @ x.to(cd).mean(dim=(1, 2))).to(weight.dtype)
    if ctx.needs_input_grad[2]:
        grad_b = g.sum(0).to(ctx.bias_dtype)
    return grad_x, grad_w, grad_b, None


pooled_bias.register_autograd(_pooled_grad, setup_context=_pooled_setup)
