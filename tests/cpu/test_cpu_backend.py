"""What is specific to the `cpu` backend (C++ extension, csrc/cpu): mixed dtypes under autocast, the C++ argument
checks, and a fuzz of shapes (the fast backend to fuzz on). Forward and gradients against the reference, every
dtype, determinism, opcheck and compile are in the shared suite, tests/ops/test_backend_conformance.py."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deltaconv_kernels import ops, reference
from deltaconv_kernels.testing import assert_close, check_pyramid_backend, random_pyramid_inputs, reference_inputs

INFO = ops.available_backends()["cpu"]
if not INFO.available:
    print(f"test_cpu_backend: skipping, the cpu backend is unavailable: {INFO.reason}")
    pytest.skip(f"cpu backend unavailable: {INFO.reason}", allow_module_level=True)


def _inputs(b, h, w, ci, k, n_stages, dtype, gen):
    return random_pyramid_inputs(b, h, w, ci, k, n_stages, dtype, generator=gen)


def test_pyramid_mixed_weight_dtype(gen):
    """Under autocast u is bf16 while the stage weights stay fp32: grads come back in each tensor's dtype."""
    u, weights = _inputs(1, 9, 7, 8, 3, 2, torch.bfloat16, gen)
    weights = [wt.detach().float().requires_grad_() for wt in weights]
    out = ops.pyramid(u, weights, (1.0, 0.5), "scaled", backend="cpu")
    grad = torch.randn(out.shape, generator=gen).to(out.dtype)
    gu, *gws = torch.autograd.grad(out, [u, *weights], grad)
    assert gu.dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in gws)
    ur, *wr = reference_inputs(u, *weights)
    ref = reference.pyramid(ur, wr, (1.0, 0.5), "scaled")
    assert_close(out, ref, torch.bfloat16)
    # The values too: the inputs are bf16, so every gradient is held to the bf16 tolerance.
    ref_grads = torch.autograd.grad(ref, [ur, *wr], grad.double())
    for name, got, want in zip(("grad u", "grad weights[0]", "grad weights[1]"), (gu, *gws), ref_grads):
        assert_close(got, want, torch.bfloat16, name)


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
    # Thin pooled sizes are valid (max(1, int(H*s)) per axis): no scale is filtered out.
    check_pyramid_backend("cpu", (1, h, w, 2 * half, k, tuple(scales), gate), torch.float32,
                          generator=torch.Generator().manual_seed(seed))


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
