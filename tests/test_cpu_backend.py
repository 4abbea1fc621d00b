"""The `cpu` backend (C++ extension, csrc/cpu) against the reference: forward and every gradient through the
public ops (so the torch.library registration and autograd run too), on fp64-upcast reference inputs."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deltaconv_kernels import DeltaConvBlock, ops, reference
from deltaconv_kernels.testing import (
    DTYPES,
    assert_close,
    check_block_backend,
    check_pyramid_backend,
    random_pyramid_inputs,
    reference_inputs,
)

INFO = ops.available_backends()["cpu"]
if not INFO.available:
    print(f"test_cpu_backend: skipping, the cpu backend is unavailable: {INFO.reason}")
    pytest.skip(f"cpu backend unavailable: {INFO.reason}", allow_module_level=True)

# (b, h, w, ci, k, scales, gate): odd and non-power-of-two sizes, B=1, every K of the issue, both gates.
CASES = [
    (1, 13, 9, 12, 3, (1.0, 0.5), "scaled"),
    (2, 25, 17, 20, 5, (1.0, 0.5, 0.25), "sigmoid"),
    (1, 7, 5, 34, 13, (1.0, 0.5), "sigmoid"),
    (2, 3, 2, 6, 1, (1.0, 0.5), "scaled"),
    (1, 25, 17, 40, 13, (1.0, 0.5, 0.25), "scaled"),
]


def _inputs(b, h, w, ci, k, n_stages, dtype, gen, strided_u=False):
    return random_pyramid_inputs(b, h, w, ci, k, n_stages, dtype, generator=gen, strided_u=strided_u)


def _check_pyramid(case, dtype, gen, strided_u=False, strided_grad=True):
    check_pyramid_backend("cpu", case, dtype, generator=gen, strided_u=strided_u, strided_grad=strided_grad)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])) + f"-{len(c[5])}s-{c[6]}")
def test_pyramid_matches_reference(case, dtype, gen):
    _check_pyramid(case, dtype, gen)


def test_pyramid_strided_u_and_contiguous_grad(gen):
    _check_pyramid((2, 11, 7, 18, 5, (1.0, 0.5), "sigmoid"), torch.float32, gen, strided_u=True, strided_grad=False)


def test_pyramid_fp64_is_exact(gen):
    _check_pyramid((1, 9, 6, 10, 3, (1.0, 0.5, 0.25), "sigmoid"), torch.float64, gen)


def test_pyramid_mixed_weight_dtype(gen):
    """Under autocast u is bf16 while the stage weights stay fp32: grads come back in each tensor's dtype."""
    u, weights = _inputs(1, 9, 7, 8, 3, 2, torch.bfloat16, gen)
    weights = [wt.detach().float().requires_grad_() for wt in weights]
    out = ops.pyramid(u, weights, (1.0, 0.5), "scaled", backend="cpu")
    gu, *gws = torch.autograd.grad(out, [u, *weights], torch.randn_like(out))
    assert gu.dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in gws)
    ur, *wr = reference_inputs(u, *weights)
    assert_close(out, reference.pyramid(ur, wr, (1.0, 0.5), "scaled"), torch.bfloat16)


def test_pyramid_deterministic(gen):
    u, weights = _inputs(2, 19, 13, 24, 5, 2, torch.float32, gen)
    grad = torch.randn(2, 19, 13, 24, generator=gen)
    first = torch.autograd.grad(ops.pyramid(u, weights, (1.0, 0.5), backend="cpu"), [u, *weights], grad)
    second = torch.autograd.grad(ops.pyramid(u, weights, (1.0, 0.5), backend="cpu"), [u, *weights], grad)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gate", ["scaled", "sigmoid"])
def test_block_matches_reference(dtype, gate, gen):
    """The whole block on a [B, N, C] view: output, grad of x, and every parameter grad (pooled bias included)."""
    check_block_backend("cpu", dtype, gate, generator=gen)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pooled_bias_matches_reference(dtype, gen):
    x = torch.randn(3, 9, 7, 41, generator=gen)[..., 1:].to(dtype)  # a strided channel slice
    weight = torch.randn(40, 40, generator=gen).to(dtype)
    bias = torch.randn(40, generator=gen).to(dtype)
    out = ops.pooled_bias(x, weight, bias, backend="cpu")
    assert out.dtype == dtype
    assert_close(out, reference.pooled_bias(*reference_inputs(x, weight, bias)), dtype, "pooled bias")


def test_bad_input_is_a_clear_error():
    u = torch.randn(1, 4, 4, 6)
    with pytest.raises(RuntimeError, match=r"weights\[0\] must be \[K, K, 6\] with odd K"):
        torch.ops.deltaconv_C.pyramid_forward(u, [torch.randn(2, 2, 6)], [1.0], False, 1.0)
    with pytest.raises(RuntimeError, match="scales\\[0\\] must lie in"):
        torch.ops.deltaconv_C.pyramid_forward(u, [torch.randn(3, 3, 6)], [1.5], False, 1.0)
    with pytest.raises(RuntimeError, match="grad_out must be"):
        torch.ops.deltaconv_C.pyramid_backward(torch.randn(1, 4, 4, 5), u, [torch.randn(3, 3, 6)], [1.0], False, 1.0)
    with pytest.raises(RuntimeError, match="weight must be"):
        torch.ops.deltaconv_C.pooled_bias(u, torch.randn(3, 5), torch.randn(3))


@settings(max_examples=10, deadline=None)
@given(h=st.integers(1, 17), w=st.integers(1, 17), half=st.integers(1, 12), k=st.sampled_from([1, 3, 5, 7, 31]),
       scales=st.lists(st.sampled_from([1.0, 0.75, 0.5, 0.33, 0.25]), min_size=1, max_size=3),
       gate=st.sampled_from(["scaled", "sigmoid"]), seed=st.integers(0, 2**16))
def test_fuzz_shapes(h, w, half, k, scales, gate, seed):
    _check_pyramid((1, h, w, 2 * half, k, scales, gate), torch.float32, torch.Generator().manual_seed(seed))


def test_opcheck(gen):
    u, weights = _inputs(1, 7, 5, 6, 3, 2, torch.float32, gen)
    torch.library.opcheck(torch.ops.deltaconv.pyramid.default, (u, weights, [1.0, 0.5], True, 1.5, "cpu"))
    x = torch.randn(2, 5, 3, 8, generator=gen, requires_grad=True)
    wt = torch.randn(4, 8, generator=gen, requires_grad=True)
    bias = torch.randn(4, generator=gen, requires_grad=True)
    torch.library.opcheck(torch.ops.deltaconv.pooled_bias.default, (x, wt, bias, "cpu"))


def test_torch_compile_fullgraph(gen):
    torch._dynamo.reset()
    block = DeltaConvBlock(16, kernel_size=3, scales=(1.0, 0.5), gate="sigmoid", backend="cpu")
    x = torch.randn(2, 7, 5, 16, generator=gen, requires_grad=True)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.sum().backward()
    x_eager = x.detach().clone().requires_grad_()
    y_eager = block(x_eager)
    y_eager.sum().backward()
    assert_close(y, y_eager, torch.float32, "compiled output")
    assert_close(x.grad, x_eager.grad, torch.float32, "compiled grad x")


def test_pooled_bias_fp64_backward_stays_fp64(gen):
    # The backward of the pooled bias runs in the compute dtype: fp64 gradients are fp64-accurate.
    x = torch.randn(2, 5, 3, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    wt = torch.randn(7, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 7, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(ops.pooled_bias(x, wt, b, backend="cpu"), [x, wt, b], g)
    xr, wr, br = reference_inputs(x, wt, b)
    want = torch.autograd.grad(reference.pooled_bias(xr, wr, br), [xr, wr, br], g)
    for name, a, e in zip(("grad_x", "grad_weight", "grad_bias"), got, want):
        assert a.dtype == torch.float64
        assert_close(a, e, torch.float64, name)
