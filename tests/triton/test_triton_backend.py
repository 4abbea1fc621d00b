"""The `triton` backend against the reference: forward and every gradient, through the public ops (so the
torch.library registration and autograd are exercised too).

Runs under TRITON_INTERPRET=1 on CPU tensors (CI: a separate pytest invocation with that variable set, since
it must be set before triton is imported), or on CUDA tensors with larger shapes when a GPU is present.
"""

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deltaconv_kernels import ops
from deltaconv_kernels.testing import (
    assert_close,
    check_map_16k,
    check_pyramid_backend,
    random_like_grad,
    random_pyramid_inputs,
)

try:
    import triton  # noqa: F401
    _HAVE_TRITON = True
except ImportError:
    _HAVE_TRITON = False

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
CUDA = torch.cuda.is_available() and not INTERPRET
if not _HAVE_TRITON:
    pytest.skip("triton is not installed", allow_module_level=True)
if not (INTERPRET or CUDA):
    pytest.skip("no CUDA device and TRITON_INTERPRET != '1': run this file with TRITON_INTERPRET=1 in the "
                "environment of the pytest process to test the kernels in the Triton interpreter",
                allow_module_level=True)

DEVICE = "cuda" if CUDA else "cpu"
# Under the interpreter every op of every program is numpy code: shapes stay tiny, the K=13 cases few.


def _inputs(b, h, w, ci, k, n_stages, dtype, strided_u=False, seed=0):
    return random_pyramid_inputs(b, h, w, ci, k, n_stages, dtype, DEVICE, torch.Generator().manual_seed(seed),
                                 strided_u)


def _check_pyramid(case, dtype, strided_u=False):
    # grad_output is a strided channel slice, like the gradient of a torch.cat (the released code's bug)
    check_pyramid_backend("triton", case, dtype, DEVICE, torch.Generator().manual_seed(0), strided_u)


def test_probe_reports_available():
    info = ops.available_backends()["triton"]
    assert info.available, info.reason


def test_rejects_float64():
    u = torch.randn(1, 4, 4, 4, dtype=torch.float64, device=DEVICE)
    w = torch.randn(3, 3, 4, dtype=torch.float64, device=DEVICE)
    with pytest.raises(TypeError, match="u: the triton backend takes"):
        ops.pyramid(u, [w], (1.0,), backend="triton")


@pytest.mark.skipif(not CUDA, reason="a map with B*H*W*C > 2^31 elements needs a GPU with ~20 GB free")
def test_int64_offsets_16k_map():
    check_map_16k("triton")


@settings(max_examples=3, deadline=None, derandomize=True)
@given(h=st.integers(2, 7), w=st.integers(2, 7), half=st.integers(1, 3), k=st.sampled_from([1, 3, 5]),
       scales=st.sampled_from([(1.0,), (0.5,), (1.0, 0.6)]), gate=st.sampled_from(["scaled", "sigmoid"]))
def test_pyramid_fuzzed_shapes(h, w, half, k, scales, gate):
    # Odd ratios (0.6) and maps smaller than K reach window / tap edge cases a fixed list misses.
    _check_pyramid((1, h, w, 2 * half, k, scales, gate), torch.float32)


# --- reductions over several, uneven spatial splits (on a GPU they are the norm; the interpreter forces them) ---
@pytest.mark.parametrize("splits", [2, 3], ids=lambda n: f"splits{n}")
def test_weight_grad_reduction_over_forced_splits(splits):
    from deltaconv_kernels.triton import launch

    # 7 rows in bands of 3 (3, 3, 1) or 4 (4, 3); the pooled stage's 3 rows in bands of 2 (2, 1) or 1 (1, 1, 1).
    with launch.reduction_splits(splits):
        _check_pyramid((2, 7, 5, 6, 3, (1.0, 0.5), "sigmoid"), torch.float32)


def test_weight_grad_forced_splits_are_bitwise_deterministic():
    from deltaconv_kernels.triton import launch

    u, weights = _inputs(1, 7, 6, 4, 3, 2, torch.float16)
    with launch.reduction_splits(3):
        out = ops.pyramid(u, weights, (1.0, 0.5), "scaled", backend="triton")
        grad = random_like_grad(out)
        first = torch.autograd.grad(out, [u, *weights], grad, retain_graph=True)
        second = torch.autograd.grad(out, [u, *weights], grad)
    for a, c in zip(first, second):
        assert torch.equal(a, c)


@pytest.mark.parametrize("splits", [3, 4], ids=lambda n: f"splits{n}")
def test_spatial_mean_over_forced_splits(splits):
    from deltaconv_kernels.triton import launch
    from deltaconv_kernels.triton.pooled_bias import spatial_mean

    x = torch.randn(2, 5, 7, 12, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    with launch.reduction_splits(splits):  # 35 pixels in 3 x 12 (12, 12, 11) or 4 x 9 (9, 9, 9, 8)
        got = spatial_mean(x)
    assert_close(got, x.double().mean(dim=(1, 2)), torch.float32, "spatial mean over forced splits")


def test_reduction_splits_rejects_zero():
    from deltaconv_kernels.triton import launch

    with pytest.raises(ValueError, match="n must be >= 1"):
        with launch.reduction_splits(0):
            pass


def test_rejects_maps_beyond_int32_index_math():
    from deltaconv_kernels.triton import launch

    u = torch.zeros(1, launch.MAX_SIDE + 1, 1, 2, device=DEVICE)
    with pytest.raises(ValueError, match="maps up to 32768 a side"):
        ops.pyramid(u, [torch.zeros(1, 1, 2, device=DEVICE)], (1.0,), backend="triton")


# --- the exact source taps of the upsample backward ---
def _bilinear_weights(y: int, low: int, out: int) -> dict:
    """{low-res index: weight} of output index y, exact (fractions), align_corners=False."""
    from fractions import Fraction

    src = max(Fraction(2 * y + 1, 2) * low / out - Fraction(1, 2), Fraction(0))
    i0 = min(int(src), low - 1)
    i1 = min(i0 + 1, low - 1)
    lam = src - int(src) if i0 == int(src) else Fraction(0)
    weights = {i0: 1 - lam}
    weights[i1] = weights.get(i1, 0) + lam
    return {i: wt for i, wt in weights.items() if wt != 0}


@settings(max_examples=60, deadline=None, derandomize=True)
@given(low=st.integers(1, 40), extra=st.integers(0, 90))
def test_upsample_span_covers_exactly_the_reaching_rows(low, extra):
    from deltaconv_kernels.triton import launch

    out = low + extra
    weights = [_bilinear_weights(y, low, out) for y in range(out)]
    widest = 0
    for i in range(low):
        reach = [y for y in range(out) if i in weights[y]]  # the rows with a nonzero weight on i, by brute force
        start = launch.first_reaching_row(i, low, out)
        end = launch.first_upsample_row(i + 1, low, out) if i + 1 < low else out
        assert reach == list(range(start, reach[-1] + 1)), (i, reach, start)
        assert reach[-1] < end
        widest = max(widest, end - start)
    assert launch.upsample_span(low, out) == widest
    if out == 2 * low and low > 1:
        assert widest == 4  # 2x: the 4 x 4 window


def test_record_launches_runs_nothing_and_sees_every_kernel():
    from deltaconv_kernels.triton import launch, pyramid_backward, pyramid_forward

    u = torch.full((1, 6, 6, 4), float("nan"))
    weights = [torch.zeros(3, 3, 4), torch.zeros(3, 3, 4)]
    with launch.record_launches() as fwd:
        out = pyramid_forward(u, weights, (1.0, 0.5), True, 1.0)
    names = [getattr(k, "fn", k).__name__ for k, *_ in fwd]
    assert names == ["_conv_gate_kernel", "_pool_kernel", "_conv_gate_kernel", "_upsample_kernel"]
    assert out.shape == (1, 6, 6, 4)
    with launch.record_launches() as bwd:
        pyramid_backward(torch.zeros(1, 6, 6, 4), u, weights, (1.0, 0.5), True, 1.0)
    names = [getattr(k, "fn", k).__name__ for k, *_ in bwd]
    assert names.count("_weight_grad_kernel") == 2 and names.count("_gate_bwd_kernel") == 2
    assert "_pool_bwd_kernel" in names


@pytest.mark.parametrize("case", [(1, 6, 5, 8, 3, (1.0, 0.5), "sigmoid"), (2, 5, 4, 32, 5, (1.0,), "scaled")],
                         ids=["ci8", "ci32"])
def test_pyramid_bf16_read_as_channel_pairs(case):
    # bf16 sources with whole, even channel blocks are read as int32 words of two channels (PACKED).
    from deltaconv_kernels.triton import launch, pyramid_forward

    b, h, w, ci, k, scales, gate = case
    with launch.record_launches() as launches:
        pyramid_forward(torch.zeros(b, h, w, ci, dtype=torch.bfloat16),
                        [torch.zeros(k, k, ci, dtype=torch.bfloat16)] * len(scales), scales, gate == "sigmoid", 1.0)
    assert launches[0][3]["PACKED"] is True  # the s = 1 stage reads the bf16 copy of u
    _check_pyramid(case, torch.bfloat16)
