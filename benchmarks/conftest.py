"""pytest-benchmark plumbing for the latency suite: one `Planner` per session (deltaconv_kernels.bench) decides
per case whether to run it or skip it with a reason and extrapolate its time; the table of measured and
extrapolated latencies is printed at the end and added to the benchmark JSON (`--benchmark-json`).

Options: --bench-device (cpu | cuda), --bench-max-res (512 .. 16K), --bench-budget (s for the latency grid),
--bench-max-call (s one baseline call may be predicted to take), --bench-out DIR (also write JSON and plot).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deltaconv_kernels import bench


def pytest_addoption(parser):
    group = parser.getgroup("deltaconv benchmarks")
    group.addoption("--bench-device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="device for the latency benchmarks (default: cuda when available)")
    group.addoption("--bench-max-res", default="16K", help="largest resolution label (512, 1K, 2K, 4K, 8K, 16K)")
    group.addoption("--bench-budget", type=float, default=360.0,
                    help="seconds the latency grid may take in total (cases that would overrun are extrapolated)")
    group.addoption("--bench-max-call", type=float, default=None,
                    help="longest predicted time of one baseline call, s (default 6 on cpu, 2 on cuda)")
    group.addoption("--bench-out", default=None, help="directory to write bench.json and latency.png into")


def _planner(config) -> bench.Planner:
    if not hasattr(config, "_deltaconv_planner"):
        device = torch.device(config.getoption("--bench-device"))
        max_call = config.getoption("--bench-max-call") or (2.0 if device.type == "cuda" else 6.0)
        cfg = bench.BenchConfig.for_device(device, budget_s=config.getoption("--bench-budget"), max_call_s=max_call)
        config._deltaconv_planner = bench.Planner(cfg)
    return config._deltaconv_planner


@pytest.fixture(scope="session")
def bench_max_res(pytestconfig) -> bench.Resolution:
    return bench.resolution(pytestconfig.getoption("--bench-max-res"))


@pytest.fixture
def bench_runner(pytestconfig):
    """run(benchmark, case, force=False): time `case` with pytest-benchmark, or skip it with the reason and its
    extrapolated time. `force` runs it whatever the time prediction (memory still checked) and keeps it out of
    the planner's table."""
    planner = _planner(pytestconfig)

    def run(benchmark, case: bench.Case, force: bool = False) -> None:
        decision = planner.decide(case)
        if not decision.run and not (force and decision.reason.startswith("predicted")):
            res = planner.skipped(case, decision.reason) if not force else None
            est = f"; extrapolated {res.seconds * 1e3:.4g} ms (exponent {res.law['exponent']:.2f})" \
                if res is not None and res.seconds is not None else ""
            benchmark.extra_info.update(res.extra_info() if res is not None else {})
            pytest.skip(f"{case.name}: {res.reason if res is not None else decision.reason}{est}")
        call, info = bench.make_call(case, planner.cfg)
        predicted = decision.predicted_s
        if predicted is None or predicted < planner.cfg.target_case_s:  # warm up (and calibrate) fast cases
            predicted = bench.time_call(call, 1)[0]
        rounds = planner.rounds(predicted)
        with bench.PeakMemory(planner.cfg.device) as mem:
            benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=0)
        if benchmark.stats is None:  # --benchmark-disable: ran once, nothing measured
            return
        res = planner.new_result(case, seconds=benchmark.stats.stats.mean, extrapolated=False, rounds=rounds,
                                 peak_mem_bytes=mem.peak_bytes, peak_mem_method=mem.method, backend=info["backend"])
        if not force:
            planner.record(res)
        benchmark.extra_info.update(res.extra_info())
        benchmark.extra_info["device"] = bench.environment(planner.cfg)["device"]

    return run


def pytest_terminal_summary(terminalreporter, config):
    planner = getattr(config, "_deltaconv_planner", None)
    if planner is None or not planner.results:
        return
    env = bench.environment(planner.cfg)
    header = f"ΔConvBlock vs attention: device={env['device']} dtype={env['dtype']} batch={planner.cfg.batch}"
    terminalreporter.write_sep("-", "deltaconv latency table")
    terminalreporter.write_line(bench.format_table(planner.results, header))
    out = config.getoption("--bench-out")
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        bench.write_json(planner.results, planner.cfg, out / "bench.json")
        bench.plot(planner.results, out / "latency.png", f"{env['device_type']} {env['dtype']} B={planner.cfg.batch}")
        terminalreporter.write_line(f"wrote {out / 'bench.json'} and {out / 'latency.png'}")


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Skipped cases never reach pytest-benchmark's list: add them, marked extrapolated, next to it."""
    planner = getattr(config, "_deltaconv_planner", None)
    if planner is not None:
        output_json["deltaconv_extrapolated"] = [r.extra_info() for r in planner.results if r.extrapolated]
