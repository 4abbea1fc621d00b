"""The layer grid: its groups and their order, one group timed round-robin with its speedups, DiTFastAttn's
schedule averages, a forced implementation that cannot run, and the merge of fresh processes (bench/grid.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest
from bench_fakes import SCHEMA, fake, flops_of, planner

from deltaconv_kernels.bench import grid
from deltaconv_kernels.bench.cases import Case, cases_for, groups
from deltaconv_kernels.bench.config import DITFASTATTN_MODES, NEIGHBORHOOD_VARIANTS, SHAPES
from deltaconv_kernels.bench.grid import measure_group, merge_processes, schedule_averages
from deltaconv_kernels.bench.records import BenchData
from deltaconv_kernels.resolutions import resolution


def test_groups_order_and_ditfastattn_modes():
    gs = groups(("pixart",), "1K", ("sdpa", "deltaconv", "ditfastattn"))
    assert [g[0].res.label for g in gs] == ["512", "1K"]
    assert gs[0][0].method == "deltaconv"  # first in its group: the speedups are taken over it
    assert {c.mode for c in gs[0] if c.method == "ditfastattn"} == set(DITFASTATTN_MODES)
    assert gs[0][0].tokens == (32, 32)
    assert SHAPES["pixart-k25"].kernel_size == 25
    with pytest.raises(ValueError, match="a resolution is one of"):
        resolution("3K")
    assert (resolution("4K").width, resolution("4K").height) == (2160, 3840)


def test_schedule_average_weights_the_plan():
    p = planner()
    fake(p, "ditfastattn", "sd15", "512", 1.0, "full")
    fake(p, "ditfastattn", "sd15", "512", 0.2, "window_residual")
    avg = schedule_averages(p.records)
    assert len(avg) == 1 and avg[0].mode == "schedule avg"
    assert avg[0].seconds_median == pytest.approx((4 * 1.0 + 16 * 0.2) / 20)  # periodic: a full step every 5


def test_measure_group_times_all_methods_and_reports_speedups():
    p = planner(max_call_s=30.0, budget_s=600.0)
    group = cases_for("sdxl", resolution("512"), ("deltaconv", "sdpa", "ditfastattn"))
    records = measure_group(group, p)
    assert len(records) == len(group)
    for r in records:
        assert SCHEMA <= set(dataclasses.asdict(r))
        if r.mode != "share_timestep":
            assert r.flops_executed >= r.flops_ideal > 0
        assert not r.extrapolated and r.rounds == 5 and r.seconds_median > 0 and r.peak_bytes is not None
    sp = {(s["over"], s["mode"]): s for s in p.speedups}
    assert ("sdpa", "forward") in sp and ("ditfastattn", "window_residual") in sp
    s = sp[("sdpa", "forward")]
    assert s["rounds"] == 5 and s["speedup_median"] > 0 and math.isfinite(s["speedup_iqr"])


def test_merge_processes_takes_the_median_of_medians_and_refits():
    runs = []
    for k, t in enumerate((1.0, 3.0, 2.0)):
        p = planner(max_call_s=1e9)
        fake(p, "deltaconv", "sd15", "512", 0.1 * t)
        fake(p, "deltaconv", "sd15", "1K", 0.4 * t)
        big = Case("deltaconv", "sd15", resolution("2K"))
        ex, ideal = flops_of(big)
        p.skipped(big, "test", ex, ideal, "cap")
        runs.append(BenchData({}, p.records, [{"model": "sd15", "resolution": "512", "dtype": "fp32", "batch": 2,
                                               "over": "sdpa", "mode": "forward", "speedup_median": 10.0 + k,
                                               "speedup_iqr": 1.0, "rounds": 5, "processes": 1}]))
    records, speeds = merge_processes(runs)
    r512 = next(r for r in records if r.resolution == "512")
    assert r512.seconds_median == pytest.approx(0.2) and r512.processes == 3
    assert r512.extra["spread"] == {"median": pytest.approx(0.2), "min": pytest.approx(0.1),
                                    "max": pytest.approx(0.3), "processes": 3}
    r2k = next(r for r in records if r.resolution == "2K")
    assert r2k.extrapolated and r2k.fit["band_s"][0] <= r2k.seconds_median <= r2k.fit["band_s"][1]
    assert speeds[0]["speedup_median"] == 11.0 and (speeds[0]["speedup_min"], speeds[0]["speedup_max"]) == (10, 12)


def test_forced_neighborhood_variant_is_skipped_with_its_reason(monkeypatch):
    group = cases_for("sdxl", resolution("512"), ("deltaconv", "neighborhood"))
    assert [c.mode for c in group if c.method == "neighborhood"] == ["forward", *NEIGHBORHOOD_VARIANTS]

    real_build = grid.build

    def no_flex(case, cfg):
        if case.impl == "flex":
            raise RuntimeError("impl='flex' was forced but torch.compile cannot build CPU kernels")
        return real_build(case, cfg)

    monkeypatch.setattr(grid, "build", no_flex)
    p = planner(max_call_s=1e-9)  # nothing runs: only the decisions are checked
    records = {r.mode: r for r in measure_group(group, p) if r.method == "neighborhood"}
    assert records["flex"].seconds_median is None and "cannot build CPU kernels" in records["flex"].reason
    monkeypatch.setattr(grid, "build", lambda case, cfg: (real_build(case, cfg)[0], "flex"))  # as on a GPU
    records = {r.mode: r for r in measure_group(group, planner(max_call_s=1e-9))
               if r.method == "neighborhood"}
    assert "already the layer's own choice" in records["flex"].reason
