"""The benchmark machinery shared by `deltaconv bench` and benchmarks/: interleaved timing, the FLOPs-anchored
fit, the planner's one cap for every method, DiTFastAttn's schedule averages, the multi-process merge, the
bench.json schema, the report's tables (measured and extrapolated apart) and the CLI."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from deltaconv_kernels import bench, bench_report, cli
from deltaconv_kernels.bench_fit import FlopsFit
from deltaconv_kernels.bench_timing import Record, RoundRobin, Timing, interleaved, spread

SCHEMA = {"method", "model", "resolution", "dtype", "batch", "implementation", "seconds_median", "seconds_iqr",
          "rounds", "processes", "peak_bytes", "flops_executed", "flops_ideal", "extrapolated", "fit"}


def planner(**kw) -> bench.Planner:
    return bench.Planner(bench.BenchConfig.for_device("cpu", torch.float32, 2, **kw))


def flops_of(case: bench.Case) -> tuple[float, float]:
    return bench.case_flops(case, 2, "reference" if case.method in ("neighborhood", "ditfastattn") else "test")


def fake(p: bench.Planner, method: str, model: str, label: str, seconds: float, mode: str = "forward") -> Record:
    case = bench.Case(method, model, bench.resolution(label), mode)
    executed, ideal = flops_of(case)
    rec = p.record_for(case, "test", executed, ideal, seconds_median=seconds, seconds_iqr=0.0, rounds=5)
    p.records.append(rec)
    return rec


# ---- timing -----------------------------------------------------------------------------------------------
def test_interleaved_runs_round_robin_after_untimed_warmup():
    log = []
    timings = interleaved({"a": lambda: log.append("a"), "b": lambda: log.append("b")}, rounds=3, warmup=2)
    assert log == ["a", "b"] * 5
    assert timings["a"].rounds == 3 and timings["b"].rounds == 3
    with pytest.raises(ValueError, match="rounds must be a positive int"):
        interleaved({"a": lambda: None}, rounds=0)
    with pytest.raises(ValueError, match="at least one callable"):
        RoundRobin({})


def test_timing_median_iqr_and_spread():
    t = Timing((1.0, 2.0, 3.0, 4.0, 100.0))
    assert t.median == 3.0 and t.iqr == pytest.approx(2.0)
    assert Timing((5.0,)).iqr == 0.0
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "processes": 3}


def test_peak_memory_sees_an_allocation():
    with bench.PeakMemory(torch.device("cpu")) as mem:
        x = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched
        x.add_(1)
        del x
    assert mem.peak_bytes >= 32 << 20  # the 2 ms sampler sees most of it


# ---- the FLOPs-anchored fit -------------------------------------------------------------------------------
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
        case = bench.Case("sdpa", "pixart", bench.resolution(label))
        fake(p, "sdpa", "pixart", label, per_flop * flops_of(case)[0])
    big = bench.Case("sdpa", "pixart", bench.resolution("16K"))
    assert p.predict(big, flops_of(big)[0]) == pytest.approx(
        per_flop * flops_of(big)[0], rel=1e-6)


# ---- planner ----------------------------------------------------------------------------------------------
def test_planner_caps_every_method_deltaconv_included():
    p = planner(max_call_s=1.0, budget_s=1e6)
    for label, s in (("512", 0.1), ("1K", 0.4)):
        fake(p, "deltaconv", "pixart", label, s)
    case = bench.Case("deltaconv", "pixart", bench.resolution("4K"))
    executed, ideal = flops_of(case)
    d = p.decide(case, executed)
    assert not d.run and "the same cap for every method" in d.reason and d.predicted_s > 1.0
    rec = p.skipped(case, "test", executed, ideal, d.reason)
    assert rec.extrapolated and rec.seconds_median == pytest.approx(d.predicted_s)
    assert rec.fit["band_s"][0] <= rec.seconds_median <= rec.fit["band_s"][1]
    # One measured size: the FLOPs ratio predicts, but nothing is extrapolated from a single point.
    p = planner(max_call_s=1e-6)
    fake(p, "linfusion", "sd15", "512", 0.5)
    case = bench.Case("linfusion", "sd15", bench.resolution("1K"))
    executed, ideal = flops_of(case)
    assert p.decide(case, executed).predicted_s == pytest.approx(0.5 * executed / p.measured(case)[0].flops_executed)
    rec = p.skipped(case, "test", executed, ideal, "slow")
    assert rec.seconds_median is None and not rec.extrapolated and "fewer than 2 measured sizes" in rec.reason


def test_planner_memory_and_cfg_rules():
    p = planner(mem_fraction=1e-12)
    case = bench.Case("deltaconv", "sd15", bench.resolution("512"))
    assert "GiB free" in p.decide(case, 1.0).reason
    p = bench.Planner(bench.BenchConfig.for_device("cpu", torch.float32, 1))
    d = p.decide(bench.Case("ditfastattn", "sd15", bench.resolution("512"), "full+cfg"), 1.0)
    assert not d.run and "even batch" in d.reason


def test_groups_order_and_ditfastattn_modes():
    gs = bench.groups(("pixart",), "1K", ("sdpa", "deltaconv", "ditfastattn"))
    assert [g[0].res.label for g in gs] == ["512", "1K"]
    assert gs[0][0].method == "deltaconv"  # first in its group: the speedups are taken over it
    assert {c.mode for c in gs[0] if c.method == "ditfastattn"} == set(bench.DITFASTATTN_MODES)
    assert gs[0][0].tokens == (32, 32)
    assert bench.SHAPES["pixart-k25"].kernel_size == 25
    with pytest.raises(ValueError, match="resolution must be one of"):
        bench.resolution("3K")
    assert (bench.resolution("4K").width, bench.resolution("4K").height) == (2160, 3840)


def test_schedule_average_weights_the_plan():
    p = planner()
    fake(p, "ditfastattn", "sd15", "512", 1.0, "full")
    fake(p, "ditfastattn", "sd15", "512", 0.2, "window_residual")
    avg = bench.schedule_averages(p.records)
    assert len(avg) == 1 and avg[0].mode == "schedule avg"
    assert avg[0].seconds_median == pytest.approx((4 * 1.0 + 16 * 0.2) / 20)  # periodic: a full step every 5


def test_measure_group_times_all_methods_and_reports_speedups():
    p = planner(max_call_s=30.0, budget_s=600.0)
    group = bench.cases_for("sdxl", bench.resolution("512"), ("deltaconv", "sdpa", "ditfastattn"))
    records = bench.measure_group(group, p)
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
        big = bench.Case("deltaconv", "sd15", bench.resolution("2K"))
        ex, ideal = flops_of(big)
        p.skipped(big, "test", ex, ideal, "cap")
        runs.append({"results": [dataclasses.asdict(r) for r in p.records],
                     "speedups": [{"model": "sd15", "resolution": "512", "dtype": "fp32", "batch": 2, "over": "sdpa",
                                   "mode": "forward", "speedup_median": 10.0 + k, "speedup_iqr": 1.0, "rounds": 5,
                                   "processes": 1}]})
    records, speeds = bench.merge_processes(runs)
    r512 = next(r for r in records if r.resolution == "512")
    assert r512.seconds_median == pytest.approx(0.2) and r512.processes == 3
    assert r512.extra["spread"] == {"median": pytest.approx(0.2), "min": pytest.approx(0.1),
                                    "max": pytest.approx(0.3), "processes": 3}
    r2k = next(r for r in records if r.resolution == "2K")
    assert r2k.extrapolated and r2k.fit["band_s"][0] <= r2k.seconds_median <= r2k.fit["band_s"][1]
    assert speeds[0]["speedup_median"] == 11.0 and (speeds[0]["speedup_min"], speeds[0]["speedup_max"]) == (10, 12)


# ---- report -----------------------------------------------------------------------------------------------
def test_report_keeps_measured_and_extrapolated_apart(tmp_path):
    p = planner(max_call_s=1e9)
    fake(p, "sdpa", "sd15", "512", 0.5)
    fake(p, "sdpa", "sd15", "1K", 4.0)
    big = bench.Case("sdpa", "sd15", bench.resolution("2K"))
    p.skipped(big, "test", *flops_of(big), "slow")
    measured = bench_report.measured_table(p.records)
    assert measured[0][-2:] == ["512", "1K"]  # the extrapolated 2K has no column among the measured
    extr = bench_report.extrapolated_table(p.records)
    assert len(extr) == 2 and extr[1][2] == "2K" and "–" in extr[1][4]
    bench_report.plot(p.records, tmp_path / "lat.png")
    assert (tmp_path / "lat.png").stat().st_size > 10_000
    env = bench.environment(p.cfg)
    bench.write_json(tmp_path / "b.json", env, p.records, [], {"command": "deltaconv bench --x"})
    env2, recs, _ = bench.read_json(tmp_path / "b.json")
    assert env2["device_type"] == "cpu" and [r.extrapolated for r in recs] == [False, False, True]
    res = tmp_path / "RESULTS.md"
    res.write_text(f"# R\nbefore\n{bench_report.BEGIN}\nold\n{bench_report.END}\nafter\n")
    assert bench_report.main([str(tmp_path / "b.json"), "--results", str(res), "--title", "T"]) == 0
    text = res.read_text()
    assert "old" not in text and "### T" in text and "`deltaconv bench --x`" in text and text.endswith("after\n")
    (tmp_path / "bad.md").write_text("no markers")
    assert bench_report.main([str(tmp_path / "b.json"), "--results", str(tmp_path / "bad.md")]) == 2


def test_fit_check_predicts_the_largest_size_from_the_others(tmp_path):
    p = planner(max_call_s=1e9)
    for label in ("512", "1K", "2K"):  # exactly linear in FLOPs: the fit on 512 and 1K predicts 2K
        case = bench.Case("linfusion", "pixart", bench.resolution(label))
        fake(p, "linfusion", "pixart", label, 0.01 + 1e-11 * flops_of(case)[0])
    fake(p, "sdpa", "pixart", "512", 0.3)  # two sizes only: nothing to check
    fake(p, "sdpa", "pixart", "1K", 2.0)
    later = fake(p, "linfusion", "pixart", "2K", 2 * p.records[2].seconds_median)  # a later run of 2K counts
    table = bench_report.fit_check_table(p.records)
    assert len(table) == 2
    row = dict(zip(table[0], table[1]))
    assert (row["method"], row["fitted on"], row["checked at"]) == ("linfusion", "512, 1K", "2K")
    assert row["measured ms"] == bench_report._ms(later.seconds_median)
    assert row["error"] == "-50%" and row["in band"] == "no"
    env = bench.environment(p.cfg)
    bench.write_json(tmp_path / "b.json", env, p.records, [], {"command": "deltaconv bench --x"})
    res = tmp_path / "RESULTS.md"
    res.write_text(f"{bench_report.BEGIN}\n{bench_report.END}\n")
    assert bench_report.main([str(tmp_path / "b.json"), "--results", str(res), "--fit-check"]) == 0
    assert f"### {bench_report.FIT_CHECK_TITLE}" in res.read_text() and "| 512, 1K | 2K |" in res.read_text()


# ---- CLI --------------------------------------------------------------------------------------------------
def test_cli_grid_writes_the_schema(tmp_path, capsys):
    rc = cli.main(["bench", "--device", "cpu", "--max-resolution", "512", "--methods", "deltaconv,sdpa",
                   "--models", "sdxl", "--out", str(tmp_path), "--time-budget", "120"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Measured latency per call" in out and "Extrapolated" in out
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {r["method"] for r in data["results"]} == {"deltaconv", "sdpa"}
    for r in data["results"]:
        assert SCHEMA <= set(r) and r["batch"] == 2 and r["rounds"] == 5 and r["seconds_median"] > 0
    assert data["speedups"][0]["over"] == "sdpa" and (tmp_path / "latency.png").exists()


def test_cli_processes_merge_fresh_runs(tmp_path):
    pytest.importorskip("tqdm", reason="the bench's worker processes show progress with tqdm")
    rc = cli.main(["bench", "--device", "cpu", "--max-resolution", "512", "--methods", "deltaconv",
                   "--models", "sdxl", "--out", str(tmp_path), "--processes", "2"])
    assert rc == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    (r,) = data["results"]
    assert r["processes"] == 2 and len(r["extra"]["process_medians"]) == 2 and data["environment"]["processes"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--methods", "flash"], "--methods must be"),
    (["--rounds", "3"], "--rounds must be >= 5"),
    (["--processes", "0"], "--processes must be >= 1"),
    (["--max-resolution", "3K"], "resolution must be one of"),
    (["--min-resolution", "4K", "--max-resolution", "1K"], "is above --max-resolution"),
])
def test_cli_rejects_bad_options(tmp_path, capsys, argv, message):
    assert cli.main(["bench", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "deltaconv bench: error:" in err and message in err


def test_forced_neighborhood_variant_is_skipped_with_its_reason(monkeypatch):
    group = bench.cases_for("sdxl", bench.resolution("512"), ("deltaconv", "neighborhood"))
    assert [c.mode for c in group if c.method == "neighborhood"] == ["forward", *bench.NEIGHBORHOOD_VARIANTS]

    real_build = bench._build

    def no_flex(case, cfg):
        if case.impl == "flex":
            raise RuntimeError("impl='flex' was forced but torch.compile cannot build CPU kernels")
        return real_build(case, cfg)

    monkeypatch.setattr(bench, "_build", no_flex)
    p = planner(max_call_s=1e-9)  # nothing runs: only the decisions are checked
    records = {r.mode: r for r in bench.measure_group(group, p) if r.method == "neighborhood"}
    assert records["flex"].seconds_median is None and "cannot build CPU kernels" in records["flex"].reason
    monkeypatch.setattr(bench, "_build", lambda case, cfg: (real_build(case, cfg)[0], "flex"))  # as on a GPU
    records = {r.mode: r for r in bench.measure_group(group, planner(max_call_s=1e-9))
               if r.method == "neighborhood"}
    assert "already the layer's own choice" in records["flex"].reason
