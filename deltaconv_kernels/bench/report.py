"""Tables and plots of the benchmark files: measured and extrapolated values always apart, unstable figures
flagged.

`python -m deltaconv_kernels.bench.report bench.json [...] --results benchmarks/RESULTS.md` rewrites the part of
RESULTS.md between `<!-- bench:begin -->` and `<!-- bench:end -->` from the JSON files (one section each, with the
command that made it), so the tables there are never edited by hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deltaconv_kernels.bench.fit import FlopsFit
from deltaconv_kernels.bench.records import BenchData, Record, read_json
from deltaconv_kernels.bench.timing import IQR_LIMIT, MAX_OVER_MIN
from deltaconv_kernels.fileio import atomic_write

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
FIT_CHECK_TITLE = "Extrapolation check: the FLOPs fit against the largest measured size"
UNSTABLE = " (unstable)"
UNSTABLE_NOTE = (f"(unstable): the rounds of that figure spread too much to trust its median (IQR above "
                 f"{IQR_LIMIT:.0%} of the median, or the slowest round or process above {MAX_OVER_MIN:g}x the "
                 "fastest); the JSON says which.")
FIT_CHECK_TEXT = ("Each row fits t = a + b·FLOPs_executed on a method's smaller measured sizes (from all the files "
                  "above) and predicts its largest one, which was measured too: how far the extrapolations in the "
                  "tables above can be trusted. Error = predicted / measured − 1.")


def _label(r: Record) -> str:
    return r.method if r.mode == "forward" else f"{r.method} [{r.mode}]"


def _order(records: list[Record]):
    """Resolution labels in size order, and the (model, method label) rows in first-seen order."""
    labels = sorted(dict.fromkeys(r.resolution for r in records),
                    key=lambda lab: next(r.height * r.width for r in records if r.resolution == lab))
    rows = list(dict.fromkeys((r.model, _label(r)) for r in records))
    return labels, rows


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.4g}"


def measured_table(records: list[Record]) -> list[list[str]]:
    """Rows [model, method, implementation, cell per resolution]; a cell is `median ± IQR` ms (process spread
    in brackets when several processes ran), '-' when not measured."""
    measured = [r for r in records if not r.extrapolated and r.seconds_median is not None]
    labels, rows = _order(measured)
    out = [["model", "method", "implementation", *labels]]
    for model, label in rows:
        cells = []
        impl = ""
        for lab in labels:
            r = next((x for x in measured if (x.model, _label(x), x.resolution) == (model, label, lab)), None)
            if r is None:
                cells.append("-")
                continue
            impl = impl or r.implementation
            text = _ms(r.seconds_median) + (f" ± {_ms(r.seconds_iqr)}" if r.seconds_iqr else "")
            spread = (r.extra or {}).get("spread")
            if spread and spread["processes"] > 1:
                text += f" [{_ms(spread['min'])}–{_ms(spread['max'])}]"
            cells.append(text + (UNSTABLE if r.unstable else ""))
        out.append([model, label, impl, *cells])
    return out


def extrapolated_table(records: list[Record]) -> list[list[str]]:
    """Rows [model, method, resolution, predicted ms, band ms, fitted on, why not measured]."""
    out = [["model", "method", "resolution", "predicted ms", "band ms", "fitted on (GFLOP executed)", "why not run"]]
    for r in records:
        if not r.extrapolated or r.fit is None:
            continue
        lo, hi = r.fit["band_s"]
        on = ", ".join(f"{f / 1e9:.3g}" for f in r.fit["flops"])
        out.append([r.model, _label(r), r.resolution, _ms(r.seconds_median), f"{_ms(lo)}–{_ms(hi)}", on, r.reason])
    return out


def fit_check_table(records: list[Record]) -> list[list[str]]:
    """How far the FLOPs fit is off where it can be checked: for each method (and dtype, batch) measured at 3 or
    more sizes, fit on all but the largest and compare the prediction with the largest's measurement. Records may
    come from several runs; for a size measured twice the later record counts."""
    series: dict[tuple, dict[str, Record]] = {}
    for r in records:
        if r.extrapolated or not r.seconds_median or r.flops_executed <= 0 or r.mode.startswith("schedule"):
            continue
        series.setdefault((r.model, _label(r), r.implementation, r.dtype, r.batch), {})[r.resolution] = r
    out = [["model", "method", "dtype", "fitted on", "checked at", "predicted ms", "band ms", "measured ms",
            "error", "in band"]]
    for (model, label, _, dtype, _), by_res in series.items():
        pts = sorted(by_res.values(), key=lambda r: r.flops_executed)
        if len({p.flops_executed for p in pts}) < 3:
            continue
        *known, last = pts
        fit = FlopsFit.from_records(known)
        pred, (lo, hi) = fit.predict(last.flops_executed), fit.band(last.flops_executed)
        out.append([model, label, dtype, ", ".join(p.resolution for p in known), last.resolution, _ms(pred),
                    f"{_ms(lo)}–{_ms(hi)}", _ms(last.seconds_median), f"{pred / last.seconds_median - 1:+.0%}",
                    "yes" if lo <= last.seconds_median <= hi else "no"])
    return out


def skipped_table(records: list[Record]) -> list[list[str]]:
    out = [["model", "method", "resolution", "why not run (and not extrapolated)"]]
    for r in records:
        if r.seconds_median is None:
            out.append([r.model, _label(r), r.resolution, r.reason])
    return out


def flops_table(records: list[Record]) -> list[list[str]]:
    """Executed vs ideal GFLOPs per (model, method) at each resolution where they differ."""
    out = [["model", "method", "implementation", "resolution", "GFLOP executed", "GFLOP ideal", "executed/ideal"]]
    for r in records:
        if r.flops_ideal and abs(r.flops_executed / r.flops_ideal - 1) > 1e-3 and not r.mode.startswith("schedule"):
            out.append([r.model, _label(r), r.implementation, r.resolution, f"{r.flops_executed / 1e9:.4g}",
                        f"{r.flops_ideal / 1e9:.4g}", f"{r.flops_executed / r.flops_ideal:.2f}"])
    return out


def memory_table(records: list[Record]) -> list[list[str]]:
    measured = [r for r in records if r.peak_bytes is not None and not r.extrapolated
                and not r.mode.startswith("schedule")]
    labels, rows = _order(measured)
    out = [["model", "method", *labels]]
    for model, label in rows:
        cells = []
        for lab in labels:
            r = next((x for x in measured if (x.model, _label(x), x.resolution) == (model, label, lab)), None)
            cells.append("-" if r is None else f"{r.peak_bytes / 2**20:.0f}")
        out.append([model, label, *cells])
    return out


def speedup_table(speeds: list[dict]) -> list[list[str]]:
    out = [["model", "resolution", "dtype", "batch", "ΔConv speedup over", "median (per-round ratios)", "IQR",
            "process range", "rounds x processes"]]
    for s in speeds:
        over = s["over"] if s["mode"] == "forward" else f"{s['over']} [{s['mode']}]"
        rng = f"{s['speedup_min']:.2f}–{s['speedup_max']:.2f}" if s.get("processes", 1) > 1 else "-"
        median = f"{s['speedup_median']:.2f}x" + (UNSTABLE if s.get("unstable") else "")
        out.append([s["model"], s["resolution"], s["dtype"], str(s["batch"]), over, median,
                    f"{s['speedup_iqr']:.2f}", rng, f"{s['rounds'] // max(s['processes'], 1)} x {s['processes']}"])
    return out


def markdown(table: list[list[str]]) -> str:
    if len(table) < 2:
        return "(none)"
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    return "\n".join(lines)


def text(table: list[list[str]]) -> str:
    if len(table) < 2:
        return "  (none)"
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table)


def _headline(speeds: list[dict]) -> list[dict]:
    return [s for s in speeds if s["over"] == "sdpa"]


def _load(env: dict) -> str:
    """The machine's load during the run, as the environment block recorded it (files before it have none)."""
    if "load_avg" not in env:
        return ""
    one, five, fifteen = env["load_avg"]
    return f", load average {one:g} / {five:g} / {fifteen:g} (1 / 5 / 15 min) on {env.get('cpu_count')} CPUs"


def _any_unstable(records: list[Record], speeds: list[dict]) -> bool:
    return any(r.unstable for r in records) or any(s.get("unstable") for s in speeds)


def format_text(records: list[Record], speeds: list[dict], env: dict) -> str:
    head = (f"device={env['device']} dtype={env['dtype']} batch={env['batch']} threads={env['threads']} "
            f"torch={env['torch']} rounds={env.get('rounds')} max_call_s={env.get('max_call_s')}"
            + (f" load_avg={'/'.join(f'{v:g}' for v in env['load_avg'])}" if "load_avg" in env else ""))
    parts = [head, "Measured latency per call, ms (median ± IQR of interleaved rounds):", text(measured_table(records)),
             "Extrapolated (not run; t = a + b*FLOPs fitted on the method's measured sizes):",
             text(extrapolated_table(records)), "Not run, not extrapolated:", text(skipped_table(records)),
             "ΔConvBlock speedup over SDPA (median of per-round ratios):", text(speedup_table(_headline(speeds)))]
    if _any_unstable(records, speeds):
        parts.append(UNSTABLE_NOTE)
    return "\n".join(parts)


def format_markdown(data: BenchData) -> str:
    """The markdown section of one benchmark file: the layer grid's tables, or the end-to-end benchmark's."""
    env, records, speeds = data.environment, data.records, data.speedups
    if "parts" in env:
        return _e2e_markdown(data)
    head = (f"Device: `{env['device']}`, {env['threads']} torch threads, torch {env['torch']}, {env['dtype']}, "
            f"batch {env['batch']}, {env.get('rounds')} interleaved rounds after {env.get('warmup')} warm-up, "
            f"cap {env.get('max_call_s')} s per call for every method"
            + (f", {env['processes']} fresh processes" if env.get("processes", 1) > 1 else "") + _load(env) + ".")
    return "\n\n".join([
        f"Command: `{data.command or 'deltaconv bench'}`", head,
        *([UNSTABLE_NOTE] if _any_unstable(records, speeds) else []),
        "**Headline: ΔConvBlock speedup over SDPA** (median of per-round ratios t_SDPA / t_ΔConv from the same "
        "interleaved rounds)", markdown(speedup_table(_headline(speeds))),
        "**Measured latency per layer call, ms** (median ± IQR of the rounds; [min–max of the process medians])",
        markdown(measured_table(records)),
        "**Speedup over every method** (same rounds)", markdown(speedup_table([s for s in speeds])),
        "**Extrapolated, not measured** (t = a + b·FLOPs_executed fitted on that method's measured sizes; band = "
        "range of the pairwise fits widened by the points' relative IQR)", markdown(extrapolated_table(records)),
        "**Not run and not extrapolated**", markdown(skipped_table(records)),
        "**Peak memory per call, MiB** (added on top of the inputs)", markdown(memory_table(records)),
        "**FLOPs executed vs ideal** (where the implementation computes more than the method's ideal count)",
        markdown(flops_table(records)),
    ])


def _e2e_markdown(data: BenchData) -> str:
    """One table per (mode, model, dtype, batch): median and IQR in ms, rounds, peak memory and the speedup over
    the first SDPA row of the same resolution (the original attention; eager SDPA for the compile part)."""
    env, records = data.environment, data.records
    out = [f"Command: `{data.command}`\n"] if data.command else []
    out.append(f"Device: `{env['device']}`, {env['threads']} torch threads, torch {env['torch']}, interleaved "
               f"rounds (each row says how many){_load(env)}.\n")
    if _any_unstable(records, []):
        out.append(UNSTABLE_NOTE + "\n")
    groups = dict.fromkeys((r.mode, r.model, r.dtype, r.batch) for r in records)
    for mode, model, dtype, batch in groups:
        rows = [r for r in records if (r.mode, r.model, r.dtype, r.batch) == (mode, model, dtype, batch)]
        out.append(f"**{model}, {mode}, {dtype}, batch {batch}**\n")
        out.append("| resolution | method | implementation | median ms | IQR ms | rounds | peak MiB | vs SDPA |")
        out.append("|---|---|---|---:|---:|---:|---:|---:|")
        for r in rows:
            ref = next((s for s in rows if s.method == "sdpa" and s.resolution == r.resolution), None)
            speedup = f"{ref.seconds_median / r.seconds_median:.2f}x" if ref and r.seconds_median else "-"
            peak = f"{r.peak_bytes / 2**20:.0f}" if r.peak_bytes is not None else "-"
            compile_note = f" (compile {r.extra['compile_s']:.1f} s)" if r.extra and "compile_s" in r.extra else ""
            median = f"{r.seconds_median * 1e3:.1f}" + (UNSTABLE if r.unstable else "")
            out.append(f"| {r.resolution} | {r.method} | {r.implementation}{compile_note} | "
                       f"{median} | {r.seconds_iqr * 1e3:.1f} | {r.rounds} | {peak} | {speedup} |")
        out.append("")
    return "\n".join(out)


# What the plot shows per method: its forward call, the forced flex neighborhood, and DiTFastAttn's averages over
# its plan (its single step modes, down to the 0.1 ms of a shared step, are in the tables).
PLOT_MODES = ("forward", "flex", "schedule avg", "schedule avg+cfg")


def plot(records: list[Record], path: Path, title: str = "") -> None:
    """Log-log latency vs pixels, one panel per model: measured medians as filled points on solid lines (IQR as
    error bars); extrapolations as hollow points with their band, never joined to the measured line."""
    import matplotlib  # optional (the "bench" extra): only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.model for r in records))
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = [r for r in records if r.model == model and r.seconds_median and r.mode in PLOT_MODES]
        for i, label in enumerate(dict.fromkeys(_label(r) for r in rows)):
            color = plt.get_cmap("tab10")(i % 10)
            pts = sorted((r for r in rows if _label(r) == label), key=lambda r: r.height * r.width)
            meas = [r for r in pts if not r.extrapolated]
            extr = [r for r in pts if r.extrapolated and r.fit]
            if meas:
                ax.errorbar([r.height * r.width for r in meas], [r.seconds_median * 1e3 for r in meas],
                            yerr=[(r.seconds_iqr or 0) * 500 for r in meas], fmt="o-", color=color, label=label,
                            ms=4, capsize=2)
            if extr:
                x = [r.height * r.width for r in extr]
                y = [r.seconds_median * 1e3 for r in extr]
                lo = [yy - r.fit["band_s"][0] * 1e3 for yy, r in zip(y, extr)]
                hi = [r.fit["band_s"][1] * 1e3 - yy for yy, r in zip(y, extr)]
                ax.errorbar(x, y, yerr=[lo, hi], fmt="o", mfc="none", color=color, alpha=0.6, capsize=3,
                            label=None if meas else f"{label} (extrapolated)")
        sizes = sorted({(r.height * r.width, r.resolution) for r in records})
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([p for p, _ in sizes], [lab for _, lab in sizes])
        ax.minorticks_off()
        ax.set_xlabel("image resolution (pixels, log scale)")
        ax.set_ylabel("latency per layer call (ms)")
        ax.set_title(f"{model} layer" + (f" — {title}" if title else ""))
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, title="filled: measured (IQR bars); hollow: extrapolated (band)", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def splice(results_md: Path, sections: list[str]) -> None:
    """Replace the text between the bench markers of `results_md` with `sections`."""
    text_ = results_md.read_text()
    if BEGIN not in text_ or END not in text_ or text_.index(BEGIN) > text_.index(END):
        raise ValueError(f"{results_md} must hold the markers {BEGIN} and {END} (in that order)")
    a, b = text_.index(BEGIN) + len(BEGIN), text_.index(END)
    payload = (text_[:a] + "\n" + "\n\n".join(sections) + "\n" + text_[b:]).encode()
    atomic_write(results_md, lambda f: f.write(payload))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deltaconv_kernels.bench.report",
                                     description="bench.json -> markdown (and RESULTS.md's bench section)")
    parser.add_argument("json", nargs="+", help="bench.json files, one section each")
    parser.add_argument("--title", action="append", default=[], help="a heading per JSON file (in order)")
    parser.add_argument("--results", default=None, help="RESULTS.md whose bench section to rewrite")
    parser.add_argument("--fit-check", action="store_true",
                        help="append a section that checks the FLOPs fit against each method's largest measured "
                             "size, over the records of all the files")
    args = parser.parse_args(argv)
    sections, pooled = [], []
    try:
        for i, path in enumerate(args.json):
            data = read_json(path)
            pooled += data.records
            env = data.environment
            title = args.title[i] if i < len(args.title) else f"{env['device_type']} {env['dtype']} B={env['batch']}"
            sections.append(f"### {title}\n\n" + format_markdown(data))
        if args.fit_check:
            sections.append(f"### {FIT_CHECK_TITLE}\n\n{FIT_CHECK_TEXT}\n\n" + markdown(fit_check_table(pooled)))
        if args.results:
            splice(Path(args.results), sections)
        else:
            print("\n\n".join(sections))
    except (OSError, ValueError, KeyError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
