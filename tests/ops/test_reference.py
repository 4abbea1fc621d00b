"""The reference (the spec) against an independent NCHW formulation, plus fp64 gradchecks."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from independent import block_nchw, stage_nchw

from deltaconv_kernels import reference
from deltaconv_kernels.testing import assert_close

SHAPES = [(2, 13, 9), (1, 25, 17), (2, 7, 5), (1, 3, 2), (1, 8, 8), (1, 4, 1), (2, 1, 6)]
SCALE_SETS = [(1.0, 0.5), (1.0, 0.5, 0.25)]


def _params(c, ci, k, n_stages, gen, dtype=torch.float64):
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    return dict(p_in_w=r(ci, c) / math.sqrt(c), p_in_b=r(ci), weights=[r(k, k, ci) / k for _ in range(n_stages)],
                p_out_w=r(c, ci // 2 * n_stages), p_out_b=r(c), pool_w=r(c, c), pool_b=r(c))


@pytest.mark.parametrize("b,h,w,scales", [(*shape, sc) for shape in SHAPES for sc in SCALE_SETS])
@pytest.mark.parametrize("gate", ["scaled", "sigmoid"])
def test_stage_matches_independent_formulation(b, h, w, scales, gate, gen):
    ci, k = 6, 3
    u = torch.randn(b, h, w, ci, generator=gen, dtype=torch.float64)
    for s in scales:
        wt = torch.randn(k, k, ci, generator=gen, dtype=torch.float64)
        gs = math.sqrt(3.0)  # the default gate scale sqrt(Ci/2), Ci = 6, pinned as a number
        ours = reference.pyramid_stage(u, wt, s, gate)
        theirs = stage_nchw(u.permute(0, 3, 1, 2), wt, s, gate, gs).permute(0, 2, 3, 1)
        assert_close(ours, theirs, what=f"stage s={s}")


@pytest.mark.parametrize("b,h,w", SHAPES)
@pytest.mark.parametrize("gate", ["scaled", "sigmoid"])
def test_block_matches_independent_formulation(b, h, w, gate, gen):
    scales = (1.0, 0.5, 0.25)  # thin maps included: pooled sizes are max(1, int(H*s))
    c, ci, k = 10, 8, 5
    p = _params(c, ci, k, len(scales), gen)
    x = torch.randn(b, h, w, c, generator=gen, dtype=torch.float64)
    gs = 2.0  # the default gate scale sqrt(Ci/2), Ci = 8, pinned as a number
    ours = reference.deltaconv_block(x, p["p_in_w"], p["p_in_b"], p["weights"], scales, p["p_out_w"], p["p_out_b"],
                                     p["pool_w"], p["pool_b"], gate)
    theirs = block_nchw(x, p["p_in_w"], p["p_in_b"], p["weights"], scales, p["p_out_w"], p["p_out_b"], p["pool_w"],
                        p["pool_b"], gate, gs)
    assert_close(ours, theirs, what="block")


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 23), w=st.integers(1, 23), s=st.sampled_from([1.0, 0.5, 0.25, 0.3, 0.75]),
       k=st.sampled_from([1, 3, 5, 7]), gate=st.sampled_from(["scaled", "sigmoid"]), seed=st.integers(0, 2**16))
def test_stage_fuzz(h, w, s, k, gate, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(1, h, w, 4, generator=g, dtype=torch.float64)
    wt = torch.randn(k, k, 4, generator=g, dtype=torch.float64)
    ours = reference.pyramid_stage(u, wt, s, gate, 1.7)
    theirs = stage_nchw(u.permute(0, 3, 1, 2), wt, s, gate, 1.7).permute(0, 2, 3, 1)
    assert_close(ours, theirs, what="fuzzed stage")


@pytest.mark.parametrize("gate", ["scaled", "sigmoid"])
@pytest.mark.parametrize("h,w", [(5, 3), (7, 6)])
def test_pyramid_gradcheck(gate, h, w, gen):
    u = torch.randn(1, h, w, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    ws = [torch.randn(3, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    fn = lambda u, w0, w1: reference.pyramid(u, [w0, w1], (1.0, 0.5), gate)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (u, *ws))


def test_pooled_bias_gradcheck(gen):
    x = torch.randn(2, 3, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    wt = torch.randn(4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(reference.pooled_bias, (x, wt, b))


def test_adaptive_window_is_pytorch_semantics():
    # Windows [floor(o*H/Ho), ceil((o+1)*H/Ho)) overlap at odd sizes: 5 -> 2 gives [0,3) and [2,5).
    assert [reference.adaptive_window(o, 5, 2) for o in range(2)] == [(0, 3), (2, 5)]
    # Exact integer math: no float rounding at 16K sizes.
    assert reference.adaptive_window(4319, 8640, 4320) == (8638, 8640)


def test_output_rounded_once_to_input_dtype(gen):
    u = torch.randn(1, 9, 7, 8, generator=gen)
    wt = torch.randn(3, 3, 8, generator=gen)
    for dtype in (torch.float16, torch.bfloat16):
        out = reference.pyramid(u.to(dtype), [wt.to(dtype)] * 2, (1.0, 0.5))
        assert out.dtype == dtype
        exact = reference.pyramid(u.to(dtype).double(), [wt.to(dtype).double()] * 2, (1.0, 0.5))
        # One rounding at the end: the error is the dtype's rounding of the exact value, nothing more.
        assert torch.equal(out, exact.float().to(dtype)) or (out.double() - exact).abs().max() <= (
            exact.abs().max() * torch.finfo(dtype).eps)


def test_pool_keeps_an_inf_in_its_own_windows():
    # One Inf reaches only the pooled windows that hold it, as in F.adaptive_avg_pool2d (no 0*inf NaNs).
    u = torch.zeros(1, 6, 5, 2, dtype=torch.float32)
    u[0, 0, 0, 0] = float("inf")
    pooled = reference.adaptive_avg_pool(u, 3, 2)
    expected = torch.nn.functional.adaptive_avg_pool2d(u.permute(0, 3, 1, 2), (3, 2)).permute(0, 2, 3, 1)
    assert not pooled.isnan().any()
    assert torch.equal(pooled, expected)
    assert pooled.isinf().sum() == 1


@pytest.mark.parametrize("ci,expected", [(2, 1.0), (8, 2.0), (18, 3.0), (1152, 24.0), (640, 17.88854381999832)])
def test_default_gate_scale_is_pinned(ci, expected):
    # sqrt(Ci/2) as numbers (the released code divides by (Ci/2)**-0.5), not recomputed from the same formula.
    assert reference.default_gate_scale(ci) == pytest.approx(expected, rel=1e-15)
