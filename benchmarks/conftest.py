"""pytest-benchmark plumbing for the latency grid: one `Planner` per session; each test is one (layer shape,
resolution) group whose methods are timed round-robin (deltaconv_kernels/bench/grid.py). pytest-benchmark drives the
rounds, so its own statistic is the time of one whole round (every case of the group once, added up); the per-method
medians, IQRs and per-round speedups are in each test's extra_info and in the table printed at the end. The session
writes bench.json, bench.md (the markdown RESULTS.md holds) and latency.png to --bench-out (default: bench_out/ in
the repository) and prints that folder.

Options: --bench-device (cpu | cuda), --bench-dtype (fp32 | bf16 | fp16, or float32 | bfloat16 | float16),
--bench-max-res (a named size 512 .. 16K, or N / HxW pixels; default 2K), --bench-budget (s for the grid),
--bench-max-call (s one call of any method may be predicted to take), --bench-rounds (timed rounds per group, >= 5),
--bench-out DIR.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from deltaconv_kernels.bench.cli import write_results
from deltaconv_kernels.bench.config import BenchConfig
from deltaconv_kernels.bench.grid import Planner, measure_group, schedule_averages
from deltaconv_kernels.bench.records import BenchData, environment
from deltaconv_kernels.bench.report import format_text, plot
from deltaconv_kernels.cli.args import parse_dtype
from deltaconv_kernels.resolutions import Resolution, resolution

DEFAULT_OUT = "bench_out"  # under the repository root (git-ignored)


def pytest_addoption(parser):
    group = parser.getgroup("deltaconv benchmarks")
    group.addoption("--bench-device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="device for the latency benchmarks (default: cuda when available)")
    group.addoption("--bench-dtype", default=None, help="fp32|fp16|bf16 (or float32|float16|bfloat16); default fp16 "
                                                        "on cuda, fp32 on cpu")
    group.addoption("--bench-max-res", default="2K",
                    help="largest resolution: a named size (512, 1K, 2K, 4K, 8K, 16K) or N / HxW pixels")
    group.addoption("--bench-budget", type=float, default=720.0,
                    help="seconds the latency grid may take in total (groups that would overrun are cut)")
    group.addoption("--bench-max-call", type=float, default=None,
                    help="longest predicted time of one call of any method, s (default 6 on cpu, 2 on cuda)")
    group.addoption("--bench-rounds", type=int, default=5, help="timed round-robin rounds per group (>= 5)")
    group.addoption("--bench-out", default=None,
                    help=f"folder for bench.json, bench.md and latency.png (default {DEFAULT_OUT}/ in the repository)")


def _planner(config) -> Planner:
    if not hasattr(config, "_deltaconv_planner"):
        device = torch.device(config.getoption("--bench-device"))
        dtype = config.getoption("--bench-dtype")
        rounds = config.getoption("--bench-rounds")
        if rounds < 5:
            raise pytest.UsageError(f"--bench-rounds must be >= 5, got {rounds}")
        try:
            dtype = parse_dtype(dtype, "--bench-dtype") if dtype else None
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        kw = {"max_call_s": config.getoption("--bench-max-call")} if config.getoption("--bench-max-call") else {}
        cfg = BenchConfig.for_device(device, dtype, budget_s=config.getoption("--bench-budget"), rounds=rounds, **kw)
        config._deltaconv_planner = Planner(cfg)
    return config._deltaconv_planner


@pytest.fixture(scope="session")
def bench_max_res(pytestconfig) -> Resolution:
    try:
        return resolution(pytestconfig.getoption("--bench-max-res"))
    except ValueError as exc:
        raise pytest.UsageError(f"--bench-max-res: {exc}") from None


@pytest.fixture
def bench_group(pytestconfig):
    """run(benchmark, group): time one group round-robin through pytest-benchmark; skip it (with every reason)
    when none of its cases can run."""
    planner = _planner(pytestconfig)

    def run(benchmark, group) -> None:
        def driver(rr, rounds, warmup):
            for _ in range(warmup):
                rr.round(record=False)
            benchmark.pedantic(rr.round, rounds=rounds, iterations=1, warmup_rounds=0)

        records = measure_group(group, planner, driver)
        benchmark.extra_info["records"] = [dataclasses.asdict(r) for r in records]
        benchmark.extra_info["device"] = environment(planner.cfg)["device"]
        if all(r.seconds_median is None or r.extrapolated for r in records):
            pytest.skip("; ".join(f"{r.method}[{r.mode}]: {r.reason}" for r in records))

    return run


def pytest_terminal_summary(terminalreporter, config):
    planner = getattr(config, "_deltaconv_planner", None)
    if planner is None or not planner.records:
        return
    env = environment(planner.cfg)  # at the end: its load averages cover the run
    records = planner.records + schedule_averages(planner.records)
    terminalreporter.write_sep("-", "deltaconv latency grid (interleaved rounds)")
    terminalreporter.write_line(format_text(records, planner.speedups, env))
    out = Path(config.getoption("--bench-out") or config.rootpath / DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    command = "pytest benchmarks/ --benchmark-only " + " ".join(
        f"{o}={config.getoption(o)}" for o in ("--bench-dtype", "--bench-max-res", "--bench-max-call",
                                                "--bench-budget") if config.getoption(o) is not None)
    write_results(BenchData(env, records, planner.speedups, command), out / "bench.json", out / "bench.md")
    try:  # the results are on disk already; the plot needs matplotlib
        plot(records, out / "latency.png", f"{env['device_type']} {env['dtype']} B={planner.cfg.batch}")
        written = "bench.json, bench.md and latency.png"
    except ImportError as exc:
        written = f"bench.json and bench.md (no plot: {exc})"
    terminalreporter.write_line(f"wrote {written} to {out.resolve()}")
