"""The benchmark machinery shared by `deltaconv bench` and benchmarks/: power-law fit, the planner's
run/skip/extrapolate decisions, table/JSON/plot output, and a tiny end-to-end CLI run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from deltaconv_kernels import bench, cli


def planner(**kw) -> bench.Planner:
    return bench.Planner(bench.BenchConfig.for_device("cpu", **kw))


def fake(p: bench.Planner, method: str, model: str, label: str, seconds: float) -> bench.Result:
    case = bench.Case(method, model, bench.resolution(label))
    res = p.new_result(case, seconds=seconds, extrapolated=False, rounds=1, backend="test")
    p.record(res)
    return res


def test_power_law_fit_recovers_exponent():
    pixels = [512 ** 2, 768 ** 2, 1024 ** 2]
    law = bench.PowerLaw.fit(pixels, [3e-9 * p ** 1.3 for p in pixels])
    assert law.exponent == pytest.approx(1.3, rel=1e-9)
    assert law.predict(4096 ** 2) == pytest.approx(3e-9 * (4096 ** 2) ** 1.3, rel=1e-9)
    with pytest.raises(ValueError, match="at least 2 distinct sizes"):
        bench.PowerLaw.fit([100], [1.0])


def test_planner_extrapolates_slow_baseline_but_not_deltaconv():
    p = planner(max_call_s=2.0, budget_s=1e6)
    for label in ("512", "768", "1K"):
        px = bench.resolution(label).pixels
        fake(p, "sdpa", "pixart", label, 1e-12 * px ** 2)
        fake(p, "deltaconv", "pixart", label, 2e-7 * px)
    case = bench.Case("sdpa", "pixart", bench.resolution("4K"))
    decision = p.decide(case)
    assert not decision.run and "(max_call_s=2)" in decision.reason
    assert decision.predicted_s == pytest.approx(1e-12 * bench.resolution("4K").pixels ** 2, rel=1e-6)
    res = p.skipped(case, decision.reason)
    assert res.extrapolated and res.law["exponent"] == pytest.approx(2.0)
    assert res.seconds == pytest.approx(decision.predicted_s)
    assert "~" in bench.format_table(p.results) and "*" in bench.format_table(p.results)
    # ΔConvBlock is exempt from the per-call cap: 16K is predicted at ~27 s and still runs.
    dc = p.decide(bench.Case("deltaconv", "pixart", bench.resolution("16K")))
    assert dc.run and dc.predicted_s > 2.0


def test_planner_memory_budget_and_single_point_rules():
    p = planner(mem_fraction=1e-12)
    d = p.decide(bench.Case("deltaconv", "sd15", bench.resolution("512")))
    assert not d.run and "GiB free" in d.reason
    p = planner(budget_s=0.0)
    fake(p, "deltaconv", "sd15", "512", 0.1)
    d = p.decide(bench.Case("deltaconv", "sd15", bench.resolution("1K")))
    assert not d.run and "time budget" in d.reason
    # One measured size: the prediction scales it by the analytic FLOPs ratio; no law, so no extrapolation.
    p = planner()
    fake(p, "sdpa", "sd15", "512", 1.0)
    big = bench.Case("sdpa", "sd15", bench.resolution("1K"))
    ratio = (bench.flops.method_flops("sdpa", bench.flops.SD15, 1024, 1024, 1).total
             / bench.flops.method_flops("sdpa", bench.flops.SD15, 512, 512, 1).total)
    assert p.predict(big) == pytest.approx(ratio)
    res = p.skipped(big, "test")
    assert res.seconds is None and "fewer than 2 measured sizes" in res.reason
    # Until a method has the two sizes a law needs, a call may be predicted up to 3 x max_call_s.
    p = planner(max_call_s=ratio / 2.5)
    fake(p, "sdpa", "sd15", "512", 1.0)
    assert p.decide(big).run
    fake(p, "sdpa", "sd15", "768", 5.0)  # law exponent ~2: 1K predicted at ~15 s
    assert not p.decide(big).run
    assert p.rounds(1e-6) == p.cfg.max_rounds and p.rounds(100.0) == 1


def test_cases_order_and_bad_resolution():
    cs = bench.cases(("deltaconv", "sdpa"), ("pixart",), "1K")
    assert [c.name for c in cs] == ["deltaconv-pixart-512", "deltaconv-pixart-768", "deltaconv-pixart-1K",
                                    "sdpa-pixart-512", "sdpa-pixart-768", "sdpa-pixart-1K"]
    assert cs[0].tokens == (32, 32)
    with pytest.raises(ValueError, match="resolution must be one of"):
        bench.resolution("3K")


def test_peak_memory_sees_an_allocation():
    with bench.PeakMemory(torch.device("cpu")) as mem:
        x = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched
        x.add_(1)
        del x
    assert mem.peak_bytes >= 32 << 20  # the 2 ms sampler sees most of it


def test_plot_and_json_mark_extrapolated_points(tmp_path):
    p = planner(max_call_s=1e-9)
    for label, s in (("512", 0.01), ("768", 0.02)):
        fake(p, "deltaconv", "sd15", label, s)
        fake(p, "sdpa", "sd15", label, 10 * s ** 1.5)
    p.skipped(bench.Case("sdpa", "sd15", bench.resolution("1K")), "slow")
    bench.plot(p.results, tmp_path / "lat.png")
    assert (tmp_path / "lat.png").stat().st_size > 10_000
    bench.write_json(p.results, p.cfg, tmp_path / "b.json")
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["environment"]["device_type"] == "cpu"
    flags = {(r["method"], r["label"]): r["extrapolated"] for r in data["results"]}
    assert flags[("sdpa", "1K")] and not flags[("sdpa", "768")]


def test_cli_end_to_end(tmp_path, capsys):
    rc = cli.main(["bench", "--device", "cpu", "--max-resolution", "768", "--methods", "deltaconv,sdpa",
                   "--models", "sdxl", "--out", str(tmp_path), "--time-budget", "120"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "sdxl: latency per call in ms" in out and "deltaconv" in out and "sdpa" in out
    assert "ConvFusion" in out  # the FLOPs comparison with the paper follows the latency table
    data = json.loads((tmp_path / "bench.json").read_text())
    measured = [r for r in data["results"] if not r["extrapolated"]]
    assert {(r["method"], r["label"]) for r in measured} == {(m, lab) for m in ("deltaconv", "sdpa")
                                                             for lab in ("512", "768")}
    assert all(r["seconds"] > 0 and math.isfinite(r["seconds"]) and r["backend"] for r in measured)
    assert (tmp_path / "latency.png").exists()


def test_cli_rejects_unknown_method(tmp_path, capsys):
    assert cli.main(["bench", "--methods", "flash", "--out", str(tmp_path)]) == 2
    assert "deltaconv bench: error: --methods must be" in capsys.readouterr().err
