"""The FLOPs-anchored extrapolation: t = a + b * FLOPs fitted on a method's measured sizes, its band, and why a
quadratic method is extrapolated by its FLOPs rather than by a power law (bench/fit.py)."""

from __future__ import annotations

import pytest
from bench_fakes import fake, flops_of, planner

from deltaconv_kernels.bench.cases import Case
from deltaconv_kernels.bench.fit import FlopsFit
from deltaconv_kernels.resolutions import resolution


def test_flops_fit_recovers_a_line_and_its_band_covers_noisy_truth():
    fl = [1e9, 4e9, 16e9]
    fit = FlopsFit.fit(fl, [0.01 + 2e-11 * f for f in fl])
    assert fit.a == pytest.approx(0.01, rel=1e-6) and fit.b == pytest.approx(2e-11, rel=1e-6)
    assert fit.predict(1e12) == pytest.approx(0.01 + 20.0, rel=1e-6)
    lo, hi = fit.band(1e12)
    assert lo == pytest.approx(hi, rel=1e-6)  # exact data: every pairwise fit agrees
    noisy = FlopsFit.fit(fl, [0.012, 0.08, 0.35], rel_noise=0.1)
    lo, hi = noisy.band(1e12)
    assert lo < noisy.predict(1e12) < hi and lo < 0.9 * noisy.predict(1e12)
    d = noisy.as_dict(1e12)
    assert d["band_s"] == [lo, hi] and d["predicted_s"] == noisy.predict(1e12)


def test_flops_fit_refuses_one_point_and_never_predicts_falling_time():
    with pytest.raises(ValueError, match="at least 2 distinct"):
        FlopsFit.fit([1e9, 1e9], [1.0, 2.0])
    fit = FlopsFit.fit([1e9, 2e9], [2.0, 1.0])  # noise made time fall: proportional fallback
    assert fit.b > 0 and fit.predict(4e9) > fit.predict(2e9)
    noisy = FlopsFit.fit([1e9, 2e9], [1.0, 2.0], rel_noise=1.5)  # IQR above the median: the band stops at 0
    assert noisy.band(4e9) == (0.0, pytest.approx(4.0 * 2.5))


def test_a_quadratic_method_is_extrapolated_by_its_flops_not_a_power_law():
    """SDPA measured where its projections still dominate: a free power law would under-predict 16K."""
    p = planner(max_call_s=1e9)
    per_flop = 1e-11
    for label in ("512", "1K"):
        case = Case("sdpa", "pixart", resolution(label))
        fake(p, "sdpa", "pixart", label, per_flop * flops_of(case)[0])
    big = Case("sdpa", "pixart", resolution("16K"))
    assert p.predict(big, flops_of(big)[0]) == pytest.approx(
        per_flop * flops_of(big)[0], rel=1e-6)
