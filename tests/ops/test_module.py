"""DeltaConvBlock: public parameter layout, shapes, dtypes, the [B, N, C] view, compile, and agreement with
the reference block on the backend chosen automatically here."""

import pytest
import torch

from deltaconv_kernels import DeltaConvBlock, reference
from deltaconv_kernels.testing import DTYPES, assert_close, reference_inputs


def _reference_of(block, x):
    p = reference_inputs(block.proj_in.weight, block.proj_in.bias, *[s.weight for s in block.stages],
                         block.proj_out.weight, block.proj_out.bias, block.pool_proj.weight, block.pool_proj.bias)
    n = len(block.stages)
    (xr,) = reference_inputs(x)
    y = reference.deltaconv_block(xr, p[0], p[1], p[2:2 + n], block.scales, p[2 + n], p[3 + n], p[4 + n], p[5 + n],
                                  block.gate, block.gate_scale)
    return xr, p, y


def test_parameter_names_and_layouts():
    m = DeltaConvBlock(24, kernel_size=7, scales=(1.0, 0.5, 0.25))
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "proj_in.weight": (12, 24), "proj_in.bias": (12,),
        "stages.0.weight": (7, 7, 12), "stages.1.weight": (7, 7, 12), "stages.2.weight": (7, 7, 12),
        "proj_out.weight": (24, 18), "proj_out.bias": (24,),
        "pool_proj.weight": (24, 24), "pool_proj.bias": (24,),
    }
    assert m.gate_scale == pytest.approx(6 ** 0.5)
    assert "kernel_size=7" in repr(m) and "scales=(1.0, 0.5, 0.25)" in repr(m)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,h,w,scales,gate", [(2, 13, 9, (1.0, 0.5), "scaled"), (1, 7, 5, (1.0, 0.5), "sigmoid"),
                                               (1, 25, 17, (1.0, 0.5, 0.25), "scaled")])
def test_block_forward_and_grads_match_reference(dtype, b, h, w, scales, gate):
    torch.manual_seed(0)
    m = DeltaConvBlock(16, kernel_size=5, scales=scales, gate=gate).to(dtype)
    x = torch.randn(b, h, w, 16, dtype=dtype, requires_grad=True)
    y = m(x)
    assert y.dtype == dtype and y.shape == x.shape
    xr, pr, yr = _reference_of(m, x)
    assert_close(y, yr, dtype, "block output")
    g = torch.randn_like(y)
    y.backward(g)
    grads = torch.autograd.grad(yr, [xr, *pr], g.double())
    assert_close(x.grad, grads[0], dtype, "grad x")
    for (name, prm), gr in zip(m.named_parameters(), grads[1:]):
        assert_close(prm.grad, gr, dtype, f"grad {name}")


def test_token_sequence_view_is_the_same_map():
    m = DeltaConvBlock(8, kernel_size=3)
    x = torch.randn(2, 6, 4, 8)
    y_seq = m(x.flatten(1, 2), size=(6, 4))
    assert y_seq.shape == (2, 24, 8)
    torch.testing.assert_close(y_seq, m(x).flatten(1, 2), rtol=0, atol=0)


def test_non_contiguous_input():
    m = DeltaConvBlock(8, kernel_size=3)
    big = torch.randn(2, 9, 7, 20)
    x = big[..., 3:11]
    assert not x.is_contiguous()
    torch.testing.assert_close(m(x), m(x.contiguous()), rtol=1e-6, atol=1e-6)


def test_torch_compile_fullgraph_cpu():
    m = DeltaConvBlock(8, kernel_size=3, scales=(1.0, 0.5), backend="torch")
    x = torch.randn(1, 7, 5, 8, requires_grad=True)
    # Static shapes, from a clean dynamo state: after earlier compiles in the same process dynamo would mark the
    # sizes dynamic, and inductor (torch 2.13) cannot lower the reference's size arithmetic symbolically.
    torch._dynamo.reset()
    cm = torch.compile(m, fullgraph=True, dynamic=False)
    y = cm(x)
    grad = torch.randn_like(y)
    compiled_grads = torch.autograd.grad(y, [x, *m.parameters()], grad)
    x_eager = x.detach().clone().requires_grad_()
    y_eager = m(x_eager)
    eager_grads = torch.autograd.grad(y_eager, [x_eager, *m.parameters()], grad)
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
    names = ["x", *(n for n, _ in m.named_parameters())]
    for name, gc, ge in zip(names, compiled_grads, eager_grads):
        torch.testing.assert_close(gc, ge, rtol=1e-5, atol=1e-5, msg=lambda s, n=name: f"compiled grad {n}: {s}")


def test_autocast_mixed_precision():
    m = DeltaConvBlock(8, kernel_size=3)
    x = torch.randn(1, 6, 5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16
    assert_close(y, m(x).double(), torch.bfloat16, "autocast output")


def test_compile_fullgraph_as_the_first_call_in_a_fresh_process(tmp_path):
    """Backend probing (imports, device queries) must stay out of the traced region: in a fresh process nothing
    is cached yet, which is the case other tests in this process cannot see."""
    import subprocess
    import sys

    code = ("import torch; from deltaconv_kernels import DeltaConvBlock; "
            "m = DeltaConvBlock(8, kernel_size=3); x = torch.randn(1, 7, 5, 8); "
            "y = torch.compile(m, fullgraph=True, backend='eager')(x); "
            "assert torch.allclose(y, m(x), atol=1e-6); print('ok')")
    import os

    import deltaconv_kernels
    # The same package this process tests (installed or in-tree), not whatever the working directory holds.
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(deltaconv_kernels.__file__)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=env)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


def test_depthwise_init_matches_the_release():
    # The released kernels: kaiming_uniform_ at its default a=0 on [K, K, Ci]: bound sqrt(6 / (K * Ci)).
    torch.manual_seed(0)
    k, dim = 7, 48
    m = DeltaConvBlock(dim, kernel_size=k)
    bound = (6 / (k * m.inner_dim)) ** 0.5
    w = torch.cat([s.weight.detach().flatten() for s in m.stages])
    assert w.abs().max() <= bound
    assert w.abs().max() > 0.95 * bound  # a=sqrt(5) would stay below bound / 2.45
