"""The planner's decisions: one predicted-time cap for every method (ΔConvBlock included), extrapolation only from
two or more measured sizes, the memory and CFG-batch rules (bench/grid.py Planner)."""

from __future__ import annotations

import pytest
import torch
from bench_fakes import fake, flops_of, planner

from deltaconv_kernels.bench.cases import Case
from deltaconv_kernels.bench.config import BenchConfig
from deltaconv_kernels.bench.grid import Planner
from deltaconv_kernels.resolutions import resolution


def test_planner_caps_every_method_deltaconv_included():
    p = planner(max_call_s=1.0, budget_s=1e6)
    for label, s in (("512", 0.1), ("1K", 0.4)):
        fake(p, "deltaconv", "pixart", label, s)
    case = Case("deltaconv", "pixart", resolution("4K"))
    executed, ideal = flops_of(case)
    d = p.decide(case, executed)
    assert not d.run and "the same cap for every method" in d.reason and d.predicted_s > 1.0
    rec = p.skipped(case, "test", executed, ideal, d.reason)
    assert rec.extrapolated and rec.seconds_median == pytest.approx(d.predicted_s)
    assert rec.fit["band_s"][0] <= rec.seconds_median <= rec.fit["band_s"][1]
    # One measured size: the FLOPs ratio predicts, but nothing is extrapolated from a single point.
    p = planner(max_call_s=1e-6)
    fake(p, "linfusion", "sd15", "512", 0.5)
    case = Case("linfusion", "sd15", resolution("1K"))
    executed, ideal = flops_of(case)
    assert p.decide(case, executed).predicted_s == pytest.approx(0.5 * executed / p.measured(case)[0].flops_executed)
    rec = p.skipped(case, "test", executed, ideal, "slow")
    assert rec.seconds_median is None and not rec.extrapolated and "fewer than 2 measured sizes" in rec.reason


def test_planner_memory_and_cfg_rules():
    p = planner(mem_fraction=1e-12)
    case = Case("deltaconv", "sd15", resolution("512"))
    assert "GiB free" in p.decide(case, 1.0).reason
    p = Planner(BenchConfig.for_device("cpu", torch.float32, 1))
    d = p.decide(Case("ditfastattn", "sd15", resolution("512"), "full+cfg"), 1.0)
    assert not d.run and "even batch" in d.reason
