"""The report: measured and extrapolated values in separate tables, RESULTS.md's generated section, the FLOPs-fit
check, unstable figures flagged, the load recorded (bench/report.py)."""

from __future__ import annotations

import dataclasses

from bench_fakes import fake, flops_of, planner

from deltaconv_kernels.bench import report
from deltaconv_kernels.bench.cases import Case
from deltaconv_kernels.bench.records import BenchData, environment, read_json, write_json
from deltaconv_kernels.resolutions import resolution


def test_report_keeps_measured_and_extrapolated_apart(tmp_path):
    p = planner(max_call_s=1e9)
    fake(p, "sdpa", "sd15", "512", 0.5)
    fake(p, "sdpa", "sd15", "1K", 4.0)
    big = Case("sdpa", "sd15", resolution("2K"))
    p.skipped(big, "test", *flops_of(big), "slow")
    measured = report.measured_table(p.records)
    assert measured[0][-2:] == ["512", "1K"]  # the extrapolated 2K has no column among the measured
    extr = report.extrapolated_table(p.records)
    assert len(extr) == 2 and extr[1][2] == "2K" and "–" in extr[1][4]
    report.plot(p.records, tmp_path / "lat.png")
    assert (tmp_path / "lat.png").stat().st_size > 10_000
    env = environment(p.cfg)
    write_json(tmp_path / "b.json", BenchData(env, p.records, [], "deltaconv bench --x"))
    data = read_json(tmp_path / "b.json")
    env2, recs = data.environment, data.records
    assert env2["device_type"] == "cpu" and [r.extrapolated for r in recs] == [False, False, True]
    res = tmp_path / "RESULTS.md"
    res.write_text(f"# R\nbefore\n{report.BEGIN}\nold\n{report.END}\nafter\n")
    assert report.main([str(tmp_path / "b.json"), "--results", str(res), "--title", "T"]) == 0
    text = res.read_text()
    assert "old" not in text and "### T" in text and "`deltaconv bench --x`" in text and text.endswith("after\n")
    (tmp_path / "bad.md").write_text("no markers")
    assert report.main([str(tmp_path / "b.json"), "--results", str(tmp_path / "bad.md")]) == 2


def test_fit_check_predicts_the_largest_size_from_the_others(tmp_path):
    p = planner(max_call_s=1e9)
    for label in ("512", "1K", "2K"):  # exactly linear in FLOPs: the fit on 512 and 1K predicts 2K
        case = Case("linfusion", "pixart", resolution(label))
        fake(p, "linfusion", "pixart", label, 0.01 + 1e-11 * flops_of(case)[0])
    fake(p, "sdpa", "pixart", "512", 0.3)  # two sizes only: nothing to check
    fake(p, "sdpa", "pixart", "1K", 2.0)
    later = fake(p, "linfusion", "pixart", "2K", 2 * p.records[2].seconds_median)  # a later run of 2K counts
    table = report.fit_check_table(p.records)
    assert len(table) == 2
    row = dict(zip(table[0], table[1]))
    assert (row["method"], row["fitted on"], row["checked at"]) == ("linfusion", "512, 1K", "2K")
    assert row["measured ms"] == report._ms(later.seconds_median)
    assert row["error"] == "-50%" and row["in band"] == "no"
    env = environment(p.cfg)
    write_json(tmp_path / "b.json", BenchData(env, p.records, [], "deltaconv bench --x"))
    res = tmp_path / "RESULTS.md"
    res.write_text(f"{report.BEGIN}\n{report.END}\n")
    assert report.main([str(tmp_path / "b.json"), "--results", str(res), "--fit-check"]) == 0
    assert f"### {report.FIT_CHECK_TITLE}" in res.read_text() and "| 512, 1K | 2K |" in res.read_text()


def test_unstable_figures_are_flagged_and_the_load_is_shown():
    p = planner()
    fake(p, "deltaconv", "sd15", "512", 0.1)
    fake(p, "sdpa", "sd15", "512", 1.0, unstable="IQR 300% of the median (> 25%)")
    speeds = [{"model": "sd15", "resolution": "512", "dtype": "fp32", "batch": 2, "over": "sdpa", "mode": "forward",
               "speedup_median": 10.0, "speedup_iqr": 9.0, "rounds": 5, "processes": 1, "unstable": "IQR 90%"}]
    env = environment(p.cfg)
    measured = report.measured_table(p.records)
    assert [row[-1].endswith(report.UNSTABLE) for row in measured[1:]] == [False, True]
    assert report.speedup_table(speeds)[1][5] == "10.00x" + report.UNSTABLE
    md = report.format_markdown(BenchData(env, p.records, speeds, "deltaconv bench"))
    assert report.UNSTABLE_NOTE in md and "load average" in md
    assert report.UNSTABLE_NOTE in report.format_text(p.records, speeds, env)
    # a file without the flag or the load (written before both existed) renders as it always did
    old_env = {k: v for k, v in env.items() if k not in ("load_avg", "cpu_count")}
    stable = [dataclasses.replace(r, unstable="") for r in p.records]
    old = report.format_markdown(BenchData(old_env, stable, [{**speeds[0], "unstable": ""}], "deltaconv bench"))
    assert report.UNSTABLE not in old and "load average" not in old


def test_end_to_end_files_get_their_own_tables():
    p = planner()
    rec = fake(p, "sdpa", "pixart", "512", 2.0)
    step = dataclasses.replace(rec, mode="denoiser step", unstable="max/min of the rounds 2.50 (> 2)")
    env = {**environment(p.cfg), "parts": ["step"]}
    md = report.format_markdown(BenchData(env, [step], [], "deltaconv bench e2e"))
    assert md.startswith("Command: `deltaconv bench e2e`") and "**pixart, denoiser step, fp32, batch 2**" in md
    assert "| 512 | sdpa | test | 2000.0 (unstable) |" in md and report.UNSTABLE_NOTE in md
