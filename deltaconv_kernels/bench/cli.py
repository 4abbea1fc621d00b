"""`deltaconv bench` (the layer grid: table, bench.json, bench.md and latency.png in --out) and `deltaconv bench
e2e` (whole denoiser steps, one layer's forward+backward, torch.compile: end_to_end.json and end_to_end.md).
The old spelling of the second, `deltaconv bench --end-to-end --e2e-models ...`, still works."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from deltaconv_kernels.bench.config import (
    E2E_DTYPES,
    E2E_PARTS,
    E2E_RESOLUTIONS,
    E2E_STEP_METHODS,
    METHODS,
    MODELS,
    SHAPES,
    VAE_FACTOR,
    BenchConfig,
)
from deltaconv_kernels.bench.grid import merge_processes, run_grid
from deltaconv_kernels.bench.records import BenchData, environment, merge_records, read_json, write_json
from deltaconv_kernels.bench.report import format_markdown, format_text, plot
from deltaconv_kernels.cli.args import (
    check_at_least,
    check_device,
    check_output_dir,
    check_positive,
    parse_dtype,
    parse_resolution,
    split_choices,
    split_list,
)
from deltaconv_kernels.fileio import atomic_write
from deltaconv_kernels.resolutions import GRID, NAMED

DEFAULT_OUT = "bench_out"
SIZES_HELP = f"a named size {[r.label for r in NAMED]}, N (N x N pixels) or HxW, e.g. 768 or 1024x768"
E2E_OUTPUT = "end_to_end.json"


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="fp32|fp16|bf16 (or float32|float16|bfloat16)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default 2: classifier-free guidance)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the results (default {DEFAULT_OUT})")


def _add_e2e(parser: argparse.ArgumentParser, prefix: str, hidden: bool) -> None:
    """The end-to-end options, as `bench e2e --models` (prefix '') or the old `bench --e2e-models` (hidden)."""
    def add(name, **kw):
        if hidden:
            kw["help"] = argparse.SUPPRESS
        if kw.get("action") != "store_true":
            kw["metavar"] = name.upper().replace("-", "_")
        parser.add_argument(f"--{prefix}{name}", dest=f"e2e_{name.replace('-', '_')}", **kw)

    add("models", default=",".join(MODELS), help=f"comma-separated subset of {MODELS}")
    add("resolutions", default=",".join(E2E_RESOLUTIONS),
        help=f"comma-separated image sizes for the denoiser steps: {SIZES_HELP}")
    add("methods", default=",".join(E2E_STEP_METHODS),
        help=f"comma-separated subset of {E2E_STEP_METHODS} for the denoiser steps (sdpa = the original attention; "
             "the layer parts always run every method)")
    add("rounds", type=int, default=5, help="interleaved timed rounds per variant")
    add("parts", default=",".join(E2E_PARTS), help=f"comma-separated subset of {E2E_PARTS}")
    add("compile-backend", default="inductor", help="torch.compile backend of the compile part (default inductor)")
    add("merge", action="store_true",
        help=f"merge into the {E2E_OUTPUT} already in --out: the cases measured again replace their records, the "
             "others are kept (their runs listed under environment.earlier_runs)")
    add("tiny", action="store_true", help="small configs of the same model classes: checks the code path, measures "
                                          "nothing real")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--max-resolution", default="2K",
                        help=f"largest size of the grid ({SIZES_HELP}); the grid's sizes {[r.label for r in GRID]} "
                             "in between run too")
    parser.add_argument("--min-resolution", default="512",
                        help="smallest resolution to run (a size with nothing measured below it runs whatever its "
                             "time: the cap needs a smaller measured size to predict from)")
    parser.add_argument("--resolutions", default=None,
                        help="comma-separated sizes to run instead of --min/--max-resolution (each " + SIZES_HELP + ")")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {tuple(SHAPES)}")
    parser.add_argument("--time-budget", type=float, default=900.0, help="seconds for the whole run (per process)")
    parser.add_argument("--max-call", type=float, default=None,
                        help="longest predicted time (s) of one call, the same for every method, before a case is "
                             "skipped and extrapolated instead (default 6 on cpu, 2 on cuda)")
    parser.add_argument("--rounds", type=int, default=5, help="timed round-robin rounds per group (>= 5)")
    parser.add_argument("--processes", type=int, default=1,
                        help="repeat the grid in this many fresh processes and report the median of their medians")
    parser.add_argument("--end-to-end", action="store_true", help=argparse.SUPPRESS)  # old spelling of `bench e2e`
    _add_e2e(parser, "e2e-", hidden=True)
    sub = parser.add_subparsers(dest="bench_command", metavar="{e2e}")
    help_text = "whole denoiser steps of PixArt-Σ and SD1.5, one layer's forward+backward, torch.compile"
    e2e = sub.add_parser("e2e", help=help_text, description=help_text)
    _add_common(e2e)
    _add_e2e(e2e, "", hidden=False)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "bench_command", None) == "e2e" or args.end_to_end:
        return run_e2e(args)
    return run_layer_grid(args)


def _sizes(args: argparse.Namespace, models) -> dict:
    """The grid's sizes as `run_grid` takes them, each checked to give every model at least one token."""
    if args.resolutions:
        sizes = [parse_resolution(t, "--resolutions") for t in split_list(args.resolutions, "--resolutions")]
        chosen, kw = zip(sizes, ["--resolutions"] * len(sizes)), {"resolutions": sizes}
    else:
        low = parse_resolution(args.min_resolution, "--min-resolution")
        high = parse_resolution(args.max_resolution, "--max-resolution")
        if low.pixels > high.pixels:
            raise ValueError(f"--min-resolution {args.min_resolution} is above --max-resolution {args.max_resolution}")
        chosen, kw = [(low, "--min-resolution"), (high, "--max-resolution")], {"min_resolution": low,
                                                                                "max_resolution": high}
    for r, option in chosen:
        for m in models:
            try:
                SHAPES[m].tokens(r.height, r.width)
            except ValueError as exc:
                raise ValueError(f"{option}: {exc}") from None
    return kw


def run_layer_grid(args: argparse.Namespace) -> int:
    methods = split_choices(args.methods, METHODS, "--methods")
    models = split_choices(args.models, SHAPES, "--models")
    device = check_device(args.device)
    dtype = parse_dtype(args.dtype) if args.dtype else None
    check_at_least(args.batch, 1, "--batch")
    check_at_least(args.rounds, 5, "--rounds")
    check_at_least(args.processes, 1, "--processes")
    check_positive(args.time_budget, "--time-budget")
    check_positive(args.max_call, "--max-call")
    sizes = _sizes(args, models)
    out = check_output_dir(args.out, "--out")
    kw = {"max_call_s": args.max_call} if args.max_call else {}
    cfg = BenchConfig.for_device(device, dtype, args.batch, budget_s=args.time_budget, rounds=args.rounds, **kw)
    out.mkdir(parents=True, exist_ok=True)
    if args.processes > 1:
        runs = [_run_fresh_process(args, out / f"process-{i}", i, args.processes) for i in range(args.processes)]
        records, speeds = merge_processes(runs)
    else:
        records, speeds = run_grid(cfg, models, methods=methods, **sizes)
    env = environment(cfg)  # after the run: its load averages cover the run
    if args.processes > 1:
        env["processes"] = args.processes
    data = BenchData(env, records, speeds, _command())
    write_results(data, out / "bench.json", out / "bench.md")  # before the plot, which needs matplotlib
    print(format_text(records, speeds, env))
    try:
        plot(records, out / "latency.png", f"{env['device_type']} {env['dtype']} B={cfg.batch}")
    except ImportError as exc:  # the plot is the one optional part; the results are on disk already
        raise ValueError(f"the plot needs matplotlib ({exc}): pip install \"deltaconv_kernels[bench]\"; bench.json "
                         f"and bench.md were written to {out.resolve()}") from None
    print(f"wrote bench.json, bench.md and latency.png to {out.resolve()}")
    return 0


def write_results(data: BenchData, json_path: Path, md_path: Path) -> None:
    """The JSON and its markdown tables (what RESULTS.md holds)."""
    write_json(json_path, data)
    text = (format_markdown(data) + "\n").encode()
    atomic_write(md_path, lambda f: f.write(text))


def _command() -> str:
    return "deltaconv " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "deltaconv bench"


def _run_fresh_process(args, out: Path, i: int, n: int) -> BenchData:
    argv = [sys.executable, "-m", "deltaconv_kernels.cli", "bench", "--device", args.device, "--batch",
            str(args.batch), "--methods", args.methods, "--models", args.models, "--out", str(out),
            "--time-budget", str(args.time_budget), "--rounds", str(args.rounds)]
    if args.resolutions:
        argv += ["--resolutions", args.resolutions]
    else:
        argv += ["--max-resolution", args.max_resolution, "--min-resolution", args.min_resolution]
    argv += ["--dtype", args.dtype] if args.dtype else []
    argv += ["--max-call", str(args.max_call)] if args.max_call else []
    print(f"[bench] process {i + 1}/{n}: {' '.join(argv[1:])}", flush=True)
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise OSError(f"the benchmark process {i + 1}/{n} failed with exit code {proc.returncode}")
    return read_json(out / "bench.json")


# ---- bench e2e -------------------------------------------------------------------------------------------------
def run_e2e(args: argparse.Namespace) -> int:
    """The options are named as they were spelled: `--models` under `bench e2e`, `--e2e-models` in the old one."""
    def opt(name: str) -> str:
        return f"--e2e-{name}" if args.end_to_end else f"--{name}"

    models = split_choices(args.e2e_models, MODELS, opt("models"))
    parts = split_choices(args.e2e_parts, E2E_PARTS, opt("parts"))
    methods = split_choices(args.e2e_methods, E2E_STEP_METHODS, opt("methods"))
    spelled = split_list(args.e2e_resolutions, opt("resolutions"))
    resolutions = [parse_resolution(t, opt("resolutions")) for t in spelled]
    for r in resolutions:
        if r.height % VAE_FACTOR or r.width % VAE_FACTOR:
            raise ValueError(f"{opt('resolutions')}: {r.height}x{r.width} is not a multiple of the VAE factor "
                             f"{VAE_FACTOR}")
    if isinstance(args.e2e_rounds, bool) or not isinstance(args.e2e_rounds, int):
        raise ValueError(f"{opt('rounds')} must be an int, got {args.e2e_rounds!r}")
    check_at_least(args.e2e_rounds, 1, opt("rounds"))
    device = check_device(args.device)
    check_at_least(args.batch, 1, "--batch")
    dtype = parse_dtype(args.dtype or E2E_DTYPES[device.type])
    backend = args.e2e_compile_backend
    if not isinstance(backend, str) or not backend:
        raise ValueError(f"{opt('compile-backend')} must name a torch.compile backend, got {backend!r}")
    if "compile" in parts and backend not in torch._dynamo.list_backends(exclude_tags=()):
        raise ValueError(f"{opt('compile-backend')} must be one of {torch._dynamo.list_backends(exclude_tags=())}, "
                         f"got {backend!r}")
    out = check_output_dir(args.out, "--out")
    previous = out / E2E_OUTPUT
    if args.e2e_merge and not previous.is_file():
        raise ValueError(f"{opt('merge')} needs an earlier {E2E_OUTPUT} in --out, and {previous} does not exist")
    earlier = read_json(previous) if args.e2e_merge else None  # read first: a bad file fails before any timing
    cfg = BenchConfig.for_device(device, dtype, args.batch or 2, rounds=args.e2e_rounds)
    # deferred: the end-to-end benchmark needs diffusers (the "diffusers" extra), the layer grid does not
    from deltaconv_kernels.bench import e2e

    records, env = e2e.run_e2e(cfg, models, parts, methods, resolutions, bool(args.e2e_tiny), backend)
    print(format_markdown(BenchData(env, records)))
    if earlier is not None:
        old_env = earlier.environment
        env["earlier_runs"] = old_env.pop("earlier_runs", []) + [old_env]
        records = merge_records(earlier.records, records)
    out.mkdir(parents=True, exist_ok=True)
    write_results(BenchData(env, records, [], _command()), previous, out / "end_to_end.md")
    print(f"wrote {E2E_OUTPUT} and end_to_end.md ({len(records)} records, {env['wall_s']:.0f} s) to {out.resolve()}")
    return 0
