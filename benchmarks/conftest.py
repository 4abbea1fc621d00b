"""pytest-benchmark plumbing for the latency grid: one `bench.Planner` per session; each test is one (layer shape,
resolution) group whose methods are timed round-robin (deltaconv_kernels/bench.py). pytest-benchmark drives the
rounds, so its own statistic is the time of one whole round (every method once); the per-method medians, IQRs
and per-round speedups are in each test's extra_info and in the table printed at the end (`--bench-out DIR`
also writes bench.json and latency.png, the files RESULTS.md is generated from).

Options: --bench-device (cpu | cuda), --bench-dtype (fp32 | bf16 | fp16), --bench-max-res (512 .. 16K, default 2K),
--bench-budget (s for the grid), --bench-max-call (s one call of any method may be predicted to take),
--bench-rounds (timed rounds per group, >= 5), --bench-out DIR.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from deltaconv_kernels import bench, bench_report


def pytest_addoption(parser):
    group = parser.getgroup("deltaconv benchmarks")
    group.addoption("--bench-device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="device for the latency benchmarks (default: cuda when available)")
    group.addoption("--bench-dtype", default=None, choices=sorted(bench.DTYPES),
                    help="default fp16 on cuda, fp32 on cpu")
    group.addoption("--bench-max-res", default="2K", help="largest resolution label (512, 1K, 2K, 4K, 8K, 16K)")
    group.addoption("--bench-budget", type=float, default=720.0,
                    help="seconds the latency grid may take in total (groups that would overrun are cut)")
    group.addoption("--bench-max-call", type=float, default=None,
                    help="longest predicted time of one call of any method, s (default 6 on cpu, 2 on cuda)")
    group.addoption("--bench-rounds", type=int, default=5, help="timed round-robin rounds per group (>= 5)")
    group.addoption("--bench-out", default=None, help="directory to write bench.json and latency.png into")


def _planner(config) -> bench.Planner:
    if not hasattr(config, "_deltaconv_planner"):
        device = torch.device(config.getoption("--bench-device"))
        dtype = config.getoption("--bench-dtype")
        rounds = config.getoption("--bench-rounds")
        if rounds < 5:
            raise pytest.UsageError(f"--bench-rounds must be >= 5, got {rounds}")
        kw = {"max_call_s": config.getoption("--bench-max-call")} if config.getoption("--bench-max-call") else {}
        cfg = bench.BenchConfig.for_device(device, bench.DTYPES[dtype] if dtype else None,
                                           budget_s=config.getoption("--bench-budget"), rounds=rounds, **kw)
        config._deltaconv_planner = bench.Planner(cfg)
    return config._deltaconv_planner


@pytest.fixture(scope="session")
def bench_max_res(pytestconfig) -> bench.Resolution:
    return bench.resolution(pytestconfig.getoption("--bench-max-res"))


@pytest.fixture
def bench_group(pytestconfig):
    """run(benchmark, group): time one group round-robin through pytest-benchmark; skip it (with every reason)
    when none of its cases can run."""
    planner = _planner(pytestconfig)

    def run(benchmark, group: list[bench.Case]) -> None:
        def driver(rr, rounds, warmup):
            for _ in range(warmup):
                rr.round(record=False)
            benchmark.pedantic(rr.round, rounds=rounds, iterations=1, warmup_rounds=0)

        records = bench.measure_group(group, planner, driver)
        benchmark.extra_info["records"] = [dataclasses.asdict(r) for r in records]
        benchmark.extra_info["device"] = bench.environment(planner.cfg)["device"]
        if all(r.seconds_median is None or r.extrapolated for r in records):
            pytest.skip("; ".join(f"{r.method}[{r.mode}]: {r.reason}" for r in records))

    return run


def pytest_terminal_summary(terminalreporter, config):
    planner = getattr(config, "_deltaconv_planner", None)
    if planner is None or not planner.records:
        return
    env = bench.environment(planner.cfg)
    records = planner.records + bench.schedule_averages(planner.records)
    terminalreporter.write_sep("-", "deltaconv latency grid (interleaved rounds)")
    terminalreporter.write_line(bench_report.format_text(records, planner.speedups, env))
    out = config.getoption("--bench-out")
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        command = "pytest benchmarks/ --benchmark-only " + " ".join(
            f"{o}={config.getoption(o)}" for o in ("--bench-dtype", "--bench-max-res", "--bench-max-call",
                                                    "--bench-budget") if config.getoption(o) is not None)
        bench.write_json(out / "bench.json", env, records, planner.speedups, {"command": command})
        bench_report.plot(records, out / "latency.png", f"{env['device_type']} {env['dtype']} B={planner.cfg.batch}")
        terminalreporter.write_line(f"wrote {out / 'bench.json'} and {out / 'latency.png'}")
