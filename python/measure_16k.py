"""Layers measured at the benchmark's 16K (15360x8640, the paper's size) on the CPU, one case per fresh process, so
that each case's peak resident memory is its own.

    python python/measure_16k.py --methods deltaconv --models pixart,sd15 --dtypes fp32,bf16 --rounds 3
    python python/measure_16k.py --methods linfusion,mediator --models sd15 --dtypes fp32 --rounds 3

The layers, token grids and calls are the latency grid's (deltaconv_kernels.bench: build_layer, Case.tokens,
make_call), B=1 by default. Each case prints one JSON line; the end prints a markdown table. Per case: seconds
per call (minimum and median of the rounds; every call is timed, the first included: at 16K an untimed warm-up
would double the run), the process's peak RSS (getrusage ru_maxrss), the RSS before the input existed (imports
and weights), and the call's peak memory (peak RSS minus that) as a multiple of the layer's input + output size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_case(method: str, model: str, dtype_name: str, batch: int, rounds: int) -> dict:
    """One case in this process (call it in a fresh one: ru_maxrss is the process's peak)."""
    import torch

    from deltaconv_kernels import bench

    case = bench.Case(method, model, bench.resolution("16K"))
    cfg = bench.BenchConfig.for_device("cpu", bench.DTYPES[dtype_name], batch=batch)
    built = bench.build_layer(method, model, cfg.device, cfg.dtype)
    rss_before_input = _rss_bytes()
    h, w = case.tokens
    x = torch.empty(batch, h * w, case.shape.channels, dtype=cfg.dtype).uniform_(-1, 1)
    call, impl = bench.make_call(case, cfg, x, built)
    seconds = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    in_out = 2 * x.numel() * x.element_size()  # the output has the input's shape
    return {"method": method, "model": model, "dtype": dtype_name, "batch": batch, "resolution": "16K",
            "tokens": [h, w], "channels": case.shape.channels, "implementation": impl, "rounds": rounds,
            "seconds_min": min(seconds), "seconds_median": statistics.median(seconds), "seconds": seconds,
            "peak_rss_bytes": peak, "rss_before_input_bytes": rss_before_input, "input_output_bytes": in_out,
            "call_peak_over_input_output": (peak - rss_before_input) / in_out, "threads": torch.get_num_threads()}


def table(rows: list[dict]) -> str:
    lines = ["| method | model | dtype | B | tokens | s/call min | s/call median | rounds | peak RSS GiB | "
             "input+output GiB | peak / (input+output) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['model']} | {r['dtype']} | {r['batch']} | - | {r['error']} |")
            continue
        gib = 2.0 ** 30
        lines.append(f"| {r['method']} | {r['model']} | {r['dtype']} | {r['batch']} | {r['tokens'][0]}x{r['tokens'][1]}"
                     f" | {r['seconds_min']:.1f} | {r['seconds_median']:.1f} | {r['rounds']} | "
                     f"{r['peak_rss_bytes'] / gib:.2f} | {r['input_output_bytes'] / gib:.2f} | "
                     f"{r['call_peak_over_input_output']:.2f} |")
    return "\n".join(lines)


def _csv(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="layers at 16K on the CPU, one fresh process per case")
    parser.add_argument("--methods", default="deltaconv", help="comma-separated methods of the latency grid")
    parser.add_argument("--models", default="pixart,sd15", help="comma-separated layer shapes")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated of fp32, bf16, fp16")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--case", nargs=3, metavar=("METHOD", "MODEL", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch < 1 or args.rounds < 1:
        parser.error("--batch and --rounds must be >= 1")
    if args.case:  # the child: one case, one JSON line
        print(json.dumps(run_case(*args.case, args.batch, args.rounds)), flush=True)
        return 0
    rows = []
    for method in _csv(args.methods):
        for model in _csv(args.models):
            for dtype in _csv(args.dtypes):
                proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--case", method, model, dtype,
                                       "--batch", str(args.batch), "--rounds", str(args.rounds)],
                                      capture_output=True, text=True)
                if proc.returncode == 0:
                    row = json.loads(proc.stdout.strip().splitlines()[-1])
                else:
                    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                    row = {"method": method, "model": model, "dtype": dtype, "batch": args.batch,
                           "error": f"exit {proc.returncode}: {tail}"}
                print(json.dumps(row), flush=True)
                rows.append(row)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
