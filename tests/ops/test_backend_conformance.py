"""One conformance suite for every backend: the same checks against the reference, parametrised over
`torch`, `cpu`, `triton` (on a GPU, or on CPU tensors under TRITON_INTERPRET=1) and `cuda` (on a GPU). A backend
that cannot run here is skipped with its own reason (`available_backends()`), never silently.

Checked for each backend: the pyramid forward and every gradient (u and each stage kernel) against the fp64
reference, in every dtype it takes, at odd and non-power-of-two sizes, B=1, with a strided grad_output (the
gradient of a torch.cat slice) and a strided u; bitwise-deterministic gradients; the pooled bias and its
gradients; the whole block on a [B, N, C] view; `torch.library.opcheck` of the ops; `torch.compile(fullgraph=True)`.
The per-backend files (test_cpu_backend.py, test_cuda_backend.py, test_triton_backend.py) keep only what is
specific to one backend.
"""

from __future__ import annotations

import os

import pytest
import torch

from deltaconv_kernels import DeltaConvBlock, ops, reference
from deltaconv_kernels.ops import registry
from deltaconv_kernels.testing import (
    DTYPES,
    assert_close,
    check_block_backend,
    check_pyramid_backend,
    random_like_grad,
    random_pyramid_inputs,
    reference_inputs,
)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
GPU = torch.cuda.is_available()

# (b, h, w, ci, k, scales, gate): odd and non-power-of-two sizes, B=1, K from 1 to 13, both gates, 1-3 stages.
CASES = [
    (1, 13, 9, 12, 3, (1.0, 0.5), "scaled"),
    (2, 25, 17, 20, 5, (1.0, 0.5, 0.25), "sigmoid"),
    (1, 7, 5, 34, 13, (1.0, 0.5), "sigmoid"),
    (2, 3, 2, 6, 1, (1.0, 0.5), "scaled"),
    (1, 25, 17, 40, 13, (1.0, 0.5, 0.25), "scaled"),
]
# Under the Triton interpreter every program op is numpy code: the same kinds of case, tiny.
CASES_INTERPRET = [
    (2, 7, 9, 6, 3, (1.0, 0.5), "scaled"),
    (1, 8, 9, 6, 3, (1.0, 0.5, 0.25), "sigmoid"),
    (1, 6, 4, 8, 13, (1.0, 0.5), "sigmoid"),
    (2, 3, 2, 6, 1, (1.0, 0.5), "scaled"),
]
# On a GPU, also maps larger than one kernel tile, K up to 31 and channel counts that are not a multiple of 8.
CASES_GPU_EXTRA = [
    (1, 37, 29, 40, 13, (1.0, 0.5), "sigmoid"),
    (2, 17, 23, 10, 31, (1.0, 0.5), "scaled"),
    (1, 64, 64, 96, 13, (1.0, 0.5, 0.25), "sigmoid"),
    (3, 16, 16, 160, 5, (1.0, 0.5, 0.25), "scaled"),
]
BACKENDS = ("torch", "cpu", "triton", "cuda")


class Target:
    """Where a backend runs in this session: its device and whether it is the (slow) Triton interpreter."""

    def __init__(self, backend: str):
        self.backend = backend
        info = ops.available_backends()[backend]
        if not info.available:
            pytest.skip(f"{backend} backend unavailable: {info.reason}")
        if backend == "triton":  # available on CPU tensors only under the interpreter (its probe says so)
            self.device = "cuda" if GPU and not INTERPRET else "cpu"
        else:
            self.device = "cuda" if "cpu" not in registry.DEVICES[backend] else "cpu"
        self.interpreted = backend == "triton" and self.device == "cpu"

    @property
    def cases(self) -> list:
        if self.interpreted:
            return CASES_INTERPRET
        return CASES + (CASES_GPU_EXTRA if self.device == "cuda" else [])

    @property
    def dtypes(self) -> tuple:
        # fp64 is the exactness path of the C++ kernels and the reference; the Triton kernels reject it.
        return DTYPES if self.backend == "triton" else (*DTYPES, torch.float64)

    def skip_unless_dtype(self, dtype: torch.dtype) -> None:
        if dtype not in self.dtypes:
            pytest.skip(f"{self.backend} backend does not take {dtype} (it raises a TypeError naming u)")


@pytest.fixture(params=BACKENDS)
def target(request) -> Target:
    return Target(request.param)


def _case_id(c) -> str:
    return "x".join(map(str, c[:5])) + f"-{len(c[5])}s-{c[6]}"


@pytest.mark.parametrize("dtype", (*DTYPES, torch.float64), ids=str)
@pytest.mark.parametrize("index", range(len(CASES) + len(CASES_GPU_EXTRA)))
def test_pyramid_forward_and_grads(target, index, dtype, gen):
    target.skip_unless_dtype(dtype)
    if index >= len(target.cases):
        pytest.skip(f"case {index} runs only on a GPU (a map larger than one tile, or K = 31)")
    case = target.cases[index]
    if target.interpreted and dtype != torch.float32 and index >= 3:
        pytest.skip("under the Triton interpreter the half-precision dtypes run on the first three cases only")
    check_pyramid_backend(target.backend, case, dtype, target.device, gen)


def test_pyramid_strided_u_and_contiguous_grad(target, gen):
    case = (1, 5, 7, 6, 3, (1.0, 0.5), "scaled") if target.interpreted else (2, 11, 7, 18, 5, (1.0, 0.5), "sigmoid")
    check_pyramid_backend(target.backend, case, torch.float32, target.device, gen, strided_u=True, strided_grad=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_gradients_bitwise_deterministic(target, dtype, gen):
    """Two backward passes on the same inputs give the same bits: the weight gradients (reduced over every
    position) are summed in a fixed order, grad_u is written by one thread per element."""
    b, h, w, ci, k, scales, gate = (2, 7, 9, 6, 3, (1.0, 0.5), "scaled") if target.interpreted else \
        (2, 19, 13, 24, 5, (1.0, 0.5), "sigmoid")
    u, weights = random_pyramid_inputs(b, h, w, ci, k, len(scales), dtype, target.device, gen)
    out = ops.pyramid(u, weights, scales, gate, backend=target.backend)
    grad = random_like_grad(out, generator=gen)
    first = torch.autograd.grad(out, [u, *weights], grad, retain_graph=True)
    second = torch.autograd.grad(out, [u, *weights], grad)
    for name, a, c in zip(["u", *(f"weights[{i}]" for i in range(len(weights)))], first, second):
        assert torch.equal(a, c), f"grad of {name} differs between two identical backward passes"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pooled_bias_and_grads(target, dtype, gen):
    b, h, w, c = (2, 5, 7, 12) if target.interpreted else (3, 9, 7, 40)
    # A [B, N, C] token view of a wider tensor, seen as [B, H, W, C]: strided pixels.
    x = torch.randn(b, h * w, c + 4, generator=gen)[..., :c].unflatten(1, (h, w))
    x = x.to(target.device, dtype).requires_grad_()
    weight = (torch.randn(c, c, generator=gen) / c ** 0.5).to(target.device, dtype).requires_grad_()
    bias = torch.randn(c, generator=gen).to(target.device, dtype).requires_grad_()
    out = ops.pooled_bias(x, weight, bias, backend=target.backend)
    xr, wr, br = reference_inputs(x, weight, bias)
    ref = reference.pooled_bias(xr, wr, br)
    assert out.dtype == dtype
    assert_close(out, ref, dtype, "pooled bias")
    grad = torch.randn(out.shape, generator=gen).to(target.device, dtype)
    grads = torch.autograd.grad(out, [x, weight, bias], grad)
    ref_grads = torch.autograd.grad(ref, [xr, wr, br], grad.to(torch.float64))
    for name, a, r in zip(("x", "weight", "bias"), grads, ref_grads):
        assert_close(a, r, dtype, f"pooled-bias grad {name}")


@pytest.mark.parametrize("gate", ["scaled", "sigmoid"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_block_matches_reference(target, dtype, gate, gen):
    """The whole block on a [B, N, C] view: output, grad of x and every parameter grad (pooled bias included)."""
    if target.interpreted and (dtype != torch.float32 or gate != "sigmoid"):
        pytest.skip("under the Triton interpreter the whole block runs once (fp32, sigmoid gate)")
    if target.interpreted:
        check_block_backend(target.backend, dtype, gate, target.device, gen, b=1, h=7, w=5, c=12)
    else:
        check_block_backend(target.backend, dtype, gate, target.device, gen)


def test_opcheck(target, gen):
    if target.backend == "torch":
        pytest.skip("the torch backend is plain PyTorch (autograd traces it), not a torch.library op to check")
    u, weights = random_pyramid_inputs(1, 7, 5, 6, 3, 2, torch.float32, target.device, gen)
    torch.library.opcheck(torch.ops.deltaconv.pyramid.default, (u, weights, [1.0, 0.5], True, 1.5, target.backend))
    x = torch.randn(2, 5, 3, 8, generator=gen).to(target.device).requires_grad_()
    wt = torch.randn(4, 8, generator=gen).to(target.device).requires_grad_()
    bias = torch.randn(4, generator=gen).to(target.device).requires_grad_()
    torch.library.opcheck(torch.ops.deltaconv.pooled_bias.default, (x, wt, bias, target.backend))


def test_torch_compile_fullgraph(target, gen):
    """dynamo + the ops' fake kernels + autograd trace the whole block in one graph, forward and backward
    (aot_eager: no inductor C++ compile, which would take minutes on a 2-core CI machine)."""
    torch._dynamo.reset()
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    block = DeltaConvBlock(8 if target.interpreted else 16, kernel_size=3, scales=(1.0, 0.5), gate="sigmoid",
                           backend=target.backend).to(target.device)
    x = torch.randn(1 if target.interpreted else 2, 5, 6, block.dim, generator=gen).to(target.device)
    x.requires_grad_()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager", dynamic=False)
    params = dict(block.named_parameters())
    y = compiled(x)
    grad = torch.randn(y.shape, generator=gen).to(y.device)
    grads = torch.autograd.grad(y, [x, *params.values()], grad)
    x_eager = x.detach().clone().requires_grad_()
    y_eager = block(x_eager)
    grads_eager = torch.autograd.grad(y_eager, [x_eager, *params.values()], grad)
    assert_close(y, y_eager, torch.float32, "compiled output")
    for name, got, want in zip(("x", *params), grads, grads_eager):
        assert_close(got, want, torch.float32, f"compiled grad {name}")
