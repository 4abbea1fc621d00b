"""The layer grid: latency of ΔConvBlock against the attention baselines, 512² up to 16K (`deltaconv bench`,
`pytest benchmarks/`).

How a run measures (the rules a skeptic asks for):

- Per (layer shape, resolution) group every method's call is built, then all of them are timed **round-robin**
  (`timing.interleaved`: one call of each per round, `warmup` untimed rounds first, at least 5 timed rounds),
  so load drift hits every method alike; each case reports the median and IQR of its rounds, and the headline
  speedups are medians of per-round ratios from those same rounds.
- **One cap for every method**, ΔConvBlock included: a case whose predicted time per call exceeds `max_call_s`
  is not run. Its time may be extrapolated, but only from a fit `t = a + b * FLOPs_executed` on that method's
  measured sizes (`fit.FlopsFit`), with an uncertainty band, and it is stored as `extrapolated` and shown
  in its own table, never mixed with measured values in a claim.
- A case is also skipped when its memory estimate exceeds the free memory, or its group would overrun the run's
  time budget. Every skip has its reason in the JSON.
- `processes=N` (CLI `--processes`) repeats the whole grid in N fresh processes and reports, per case, the
  median of the process medians with their spread.
- DiTFastAttn is timed in each of its step modes (full with the residual pass, window + residual, sharing the
  previous step, and both attention modes with the CFG halves shared at B = 2); its schedule-averaged cost over
  its 20-step periodic plan is derived from those.
- A figure whose rounds (or processes) spread too much is flagged `unstable`, with the reason
  (`timing.unstable_reason`), in the JSON and the tables.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from dataclasses import dataclass, field

import torch

from deltaconv_kernels.bench.cases import Case, groups
from deltaconv_kernels.bench.config import DITFASTATTN_MODES, DITFASTATTN_PLAN, METHODS, MODELS, BenchConfig
from deltaconv_kernels.bench.fit import FlopsFit
from deltaconv_kernels.bench.layers import available_memory_bytes, build, case_flops, estimate_memory_bytes, make_call
from deltaconv_kernels.bench.records import BenchData, Record
from deltaconv_kernels.bench.timing import PeakMemory, RoundRobin, Timing, interleaved, spread, unstable_reason
from deltaconv_kernels.dtypes import dtype_name


# ---- planning ---------------------------------------------------------------------------------------------
@dataclass
class Decision:
    run: bool
    reason: str = ""
    predicted_s: float | None = None


@dataclass
class Planner:
    """Holds what was measured, predicts and decides cases, and extrapolates the skipped ones."""

    cfg: BenchConfig
    records: list = field(default_factory=list)
    speedups: list = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)

    def measured(self, case: Case) -> list[Record]:
        return sorted((r for r in self.records if (r.method, r.mode, r.model) == (case.method, case.mode, case.model)
                       and not r.extrapolated and r.seconds_median), key=lambda r: r.flops_executed)

    def fit(self, case: Case) -> FlopsFit | None:
        pts = self.measured(case)
        if len({p.flops_executed for p in pts}) < 2 or any(p.flops_executed <= 0 for p in pts):
            return None  # (a step that computes nothing, DiTFastAttn's share_timestep, has no FLOPs to fit on)
        return FlopsFit.from_records(pts)

    def predict(self, case: Case, executed: float) -> float | None:
        """From the FLOPs fit; with one measured size, scaled by the FLOPs ratio; else unknown."""
        fit = self.fit(case)
        if fit is not None:
            return fit.predict(executed)
        pts = self.measured(case)
        if not pts:
            return None
        last = pts[-1]
        return last.seconds_median * executed / last.flops_executed if last.flops_executed > 0 else last.seconds_median

    def decide(self, case: Case, executed: float) -> Decision:
        if case.mode.endswith("+cfg") and self.cfg.batch % 2:
            return Decision(False, f"CFG sharing needs an even batch, got batch={self.cfg.batch}")
        need, free = estimate_memory_bytes(case, self.cfg), available_memory_bytes(self.cfg.device)
        if need > self.cfg.mem_fraction * free:
            return Decision(False, f"needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free on "
                                   f"{self.cfg.device.type} (limit {self.cfg.mem_fraction:.0%} of free)")
        predicted = self.predict(case, executed)
        if predicted is not None and predicted > self.cfg.max_call_s:
            return Decision(False, f"predicted {predicted:.3g} s per call > max_call_s={self.cfg.max_call_s:g} s "
                                   f"(the same cap for every method) on {self.cfg.device.type}", predicted)
        return Decision(True, predicted_s=predicted)

    def time_left(self) -> float:
        return self.cfg.budget_s - (time.perf_counter() - self.start)

    def record_for(self, case: Case, impl: str, executed: float, ideal: float, **kw) -> Record:
        return Record(method=case.method, model=case.model, resolution=case.res.label, height=case.res.height,
                      width=case.res.width, dtype=dtype_name(self.cfg.dtype), batch=self.cfg.batch,
                      implementation=impl, flops_executed=executed, flops_ideal=ideal,
                      mode=case.mode, **{"seconds_median": None, "seconds_iqr": None, "rounds": 0,
                                         "processes": 1, "peak_bytes": None, "extrapolated": False, **kw})

    def skipped(self, case: Case, impl: str, executed: float, ideal: float, reason: str) -> Record:
        """The skipped case, its time extrapolated from the FLOPs fit when one exists (else seconds None)."""
        fit = self.fit(case)
        rec = self.record_for(case, impl, executed, ideal, extrapolated=fit is not None,
                              reason=reason if fit else f"{reason}; not extrapolated: fewer than 2 measured sizes")
        if fit is not None:
            rec.seconds_median = fit.predict(executed)
            rec.fit = fit.as_dict(executed)
        self.records.append(rec)
        return rec


def measure_group(group: list[Case], planner: Planner, driver=None) -> list[Record]:
    """Decide, build and time one (model, resolution) group round-robin; record every case (measured or skipped)
    and the speedups of ΔConvBlock over each other method from the same rounds. `driver(round_robin, rounds,
    warmup)` may run the rounds (pytest-benchmark does); by default `interleaved` does."""
    cfg = planner.cfg
    out: list[Record] = []
    built, unavailable = {}, {}
    for c in group:
        try:
            built[c] = build(c, cfg)
        except RuntimeError as exc:  # a forced implementation that cannot run here says why
            unavailable[c] = str(exc)
    impls = {c: impl for c, (_, impl) in built.items()}
    auto = {c.method: impls.get(c) for c in group if c.mode == "forward"}
    for c in group:
        if c.impl is not None and c in impls and auto.get(c.method) == c.impl:
            unavailable[c] = f"{c.impl} is already the layer's own choice on {cfg.device.type} (the 'forward' row)"
    for c, reason in unavailable.items():
        rec = planner.record_for(c, c.impl or "", 0.0, 0.0, reason=reason)
        planner.records.append(rec)
        out.append(rec)
    group = [c for c in group if c not in unavailable]
    fl = {c: case_flops(c, cfg.batch, impls[c]) for c in group}
    runnable: dict[Case, float | None] = {}
    for c in group:
        d = planner.decide(c, fl[c][0])
        if d.run:
            runnable[c] = d.predicted_s
        else:
            out.append(planner.skipped(c, impls[c], *fl[c], d.reason))
    calls_per_case = cfg.rounds + cfg.warmup + 1  # + the peak-memory call
    while runnable and sum(p or 0.0 for p in runnable.values()) * calls_per_case > planner.time_left():
        slowest = max(runnable, key=lambda c: runnable[c] or 0.0)
        left = max(planner.time_left(), 0)
        out.append(planner.skipped(slowest, impls[slowest], *fl[slowest],
                                   f"the group would overrun the time budget ({left:.0f} s of {cfg.budget_s:g} s "
                                   "left)"))
        del runnable[slowest]
    if not runnable:
        return out
    first = next(iter(runnable))
    h, w = first.tokens
    x = torch.empty(cfg.batch, h * w, first.shape.channels, device=cfg.device, dtype=cfg.dtype).uniform_(-1, 1)
    calls = {c: make_call(c, cfg, x, built[c])[0] for c in runnable}
    rr = RoundRobin({c.name: calls[c] for c in runnable})
    if driver is None:
        timings = interleaved(rr.calls, cfg.rounds, cfg.warmup)
    else:
        driver(rr, cfg.rounds, cfg.warmup)
        timings = rr.timings()
    for c in runnable:
        with PeakMemory(cfg.device) as mem:
            calls[c]()
        t = timings[c.name]
        rec = planner.record_for(c, impls[c], *fl[c], seconds_median=t.median, seconds_iqr=t.iqr, rounds=t.rounds,
                                 peak_bytes=mem.peak_bytes, unstable=t.unstable,
                                 extra={"peak_method": mem.method, "round_seconds": list(t.seconds)})
        planner.records.append(rec)
        out.append(rec)
    planner.speedups += speedups(group[0].model, group[0].res.label, dtype_name(cfg.dtype), cfg.batch,
                                 {c.name: (c, timings[c.name]) for c in runnable})
    del calls, rr, x
    gc.collect()
    return out


def speedups(model: str, label: str, dtype: str, batch: int, timed: dict) -> list[dict]:
    """Per other method of one group: median and IQR over rounds of t_method / t_ΔConv in the same round."""
    dc = next((t for c, t in timed.values() if c.method == "deltaconv"), None)
    if dc is None:
        return []
    out = []
    for c, t in timed.values():
        if c.method == "deltaconv":
            continue
        ratios = Timing(tuple(a / b for a, b in zip(t.seconds, dc.seconds)))
        out.append({"model": model, "resolution": label, "dtype": dtype, "batch": batch, "over": c.method,
                    "mode": c.mode, "speedup_median": ratios.median, "speedup_iqr": ratios.iqr,
                    "rounds": ratios.rounds, "processes": 1, "unstable": ratios.unstable})
    return out


def schedule_averages(records: list[Record], plan=DITFASTATTN_PLAN) -> list[Record]:
    """DiTFastAttn's mean step cost over `plan` (and the same plan with the CFG halves shared), per model,
    resolution, dtype and batch, from its timed step modes. Extrapolated when any mode it uses is."""
    counts = {m: sum(plan.mode(i) == m for i in range(len(plan))) for m in ("full", "window_residual")}
    out = []
    keyf = lambda r: (r.model, r.resolution, r.dtype, r.batch)  # noqa: E731
    dft = [r for r in records if r.method == "ditfastattn" and r.mode in DITFASTATTN_MODES]
    for key in dict.fromkeys(keyf(r) for r in dft):
        modes = {r.mode: r for r in dft if keyf(r) == key}
        for suffix, label in (("", "schedule avg"), ("+cfg", "schedule avg+cfg")):
            parts = [(modes.get(m + suffix), n) for m, n in counts.items()]
            if any(p is None or p.seconds_median is None for p, _ in parts):
                continue
            total = sum(n for _, n in parts)

            def avg(attr, parts=parts, total=total):
                return sum(getattr(p, attr) * n for p, n in parts) / total
            base = parts[0][0]
            out.append(dataclasses.replace(
                base, mode=label,
                seconds_median=avg("seconds_median"), seconds_iqr=None, rounds=min(p.rounds for p, _ in parts),
                peak_bytes=max((p.peak_bytes or 0) for p, _ in parts) or None,
                flops_executed=avg("flops_executed"), flops_ideal=avg("flops_ideal"),
                extrapolated=any(p.extrapolated for p, _ in parts), fit=None,
                reason="derived from extrapolated step modes" if any(p.extrapolated for p, _ in parts) else "",
                unstable="derived from unstable step modes" if any(p.unstable for p, _ in parts) else "",
                extra={"derived_from": {p.mode: n for p, n in parts}}))
    return out


def run_grid(cfg: BenchConfig, models=MODELS, max_resolution="2K", methods=METHODS, progress=True,
             min_resolution="512", resolutions=None):
    """The whole grid in this process (sizes as `cases.groups` takes them): (records incl. DiTFastAttn schedule
    averages, speedups)."""
    from tqdm import tqdm  # optional (the "bench" extra): the grid's library code imports without it

    planner = Planner(cfg)
    todo = groups(models, max_resolution, methods, min_resolution, resolutions)
    bar = tqdm(todo, unit="group", disable=not progress)
    for group in bar:
        bar.set_postfix_str(f"{group[0].model} {group[0].res.label}")
        for rec in measure_group(group, planner):
            if rec.seconds_median is None or rec.extrapolated:
                tqdm.write(f"skip {rec.method}[{rec.mode}] {rec.model} {rec.resolution}: {rec.reason}")
    return planner.records + schedule_averages(planner.records), planner.speedups


# ---- several fresh processes ------------------------------------------------------------------------------
def merge_processes(runs: list[BenchData]) -> tuple[list[Record], list[dict]]:
    """Per case, the median of the process medians (their spread in extra; unstable when the medians disagree or
    most processes had unstable rounds); extrapolated cases are re-fitted on the merged measured points; speedups
    likewise, per (model, resolution, method, mode)."""
    by_case: dict[tuple, list[Record]] = {}
    for run in runs:
        for r in run.records:
            by_case.setdefault((r.method, r.mode, r.model, r.resolution, r.dtype, r.batch), []).append(r)
    merged = []
    for recs in by_case.values():
        measured = [r for r in recs if not r.extrapolated and r.seconds_median is not None]
        base = recs[0]
        if len(measured) == len(recs):
            s = spread(r.seconds_median for r in measured)
            noisy = sum(bool(r.unstable) for r in measured)
            why = unstable_reason((r.seconds_median for r in measured), "process medians") or (
                f"unstable rounds in {noisy} of {len(measured)} processes" if 2 * noisy > len(measured) else "")
            merged.append(dataclasses.replace(
                base, seconds_median=s["median"], seconds_iqr=statistics.median(r.seconds_iqr or 0 for r in measured),
                rounds=sum(r.rounds for r in measured), processes=len(measured),
                peak_bytes=max((r.peak_bytes or 0) for r in measured) or None, unstable=why,
                extra={"process_medians": [r.seconds_median for r in measured], "spread": s}))
        else:  # not measured in every process: extrapolated or skipped, re-fitted below
            merged.append(dataclasses.replace(base, processes=len(recs), seconds_median=None, extrapolated=False,
                                              fit=None, unstable=""))
    out = [r for r in merged if r.seconds_median is not None and not r.mode.startswith("schedule")]
    for r in merged:
        if r.seconds_median is None:
            pts = sorted((m for m in out if (m.method, m.mode, m.model, m.dtype, m.batch)
                          == (r.method, r.mode, r.model, r.dtype, r.batch)), key=lambda m: m.flops_executed)
            if len({p.flops_executed for p in pts}) >= 2:
                fit = FlopsFit.from_records(pts)
                r.seconds_median, r.extrapolated, r.fit = fit.predict(r.flops_executed), True, \
                    fit.as_dict(r.flops_executed)
            out.append(r)
    sp: dict[tuple, list[dict]] = {}
    for run in runs:
        for d in run.speedups:
            sp.setdefault((d["model"], d["resolution"], d["dtype"], d["batch"], d["over"], d["mode"]), []).append(d)
    speeds = []
    for ds in sp.values():
        s = spread(d["speedup_median"] for d in ds)
        speeds.append({**ds[0], "speedup_median": s["median"], "speedup_min": s["min"], "speedup_max": s["max"],
                       "speedup_iqr": statistics.median(d["speedup_iqr"] for d in ds), "processes": len(ds),
                       "rounds": sum(d["rounds"] for d in ds),
                       "unstable": unstable_reason((d["speedup_median"] for d in ds), "process medians")})
    return out + schedule_averages(out), speeds

