"""Latency of ΔConvBlock against the attention baselines, 512² up to 16K, and the `deltaconv bench` command.

How a run measures (the rules a skeptic asks for):

- Per (layer shape, resolution) group every method's call is built, then all of them are timed **round-robin**
  (`bench_timing.interleaved`: one call of each per round, `warmup` untimed rounds first, at least 5 timed rounds),
  so load drift hits every method alike; each case reports the median and IQR of its rounds, and the headline
  speedups are medians of per-round ratios from those same rounds.
- **One cap for every method**, ΔConvBlock included: a case whose predicted time per call exceeds `max_call_s`
  is not run. Its time may be extrapolated, but only from a fit `t = a + b * FLOPs_executed` on that method's
  measured sizes (`bench_fit.FlopsFit`), with an uncertainty band, and it is stored as `extrapolated` and shown
  in its own table, never mixed with measured values in a claim.
- A case is also skipped when its memory estimate exceeds the free memory, or its group would overrun the run's
  time budget. Every skip has its reason in the JSON.
- `processes=N` (CLI `--processes`) repeats the whole grid in N fresh processes and reports, per case, the
  median of the process medians with their spread.
- DiTFastAttn is timed in each of its step modes (full with the residual pass, window + residual, sharing the
  previous step, and both attention modes with the CFG halves shared at B = 2); its schedule-averaged cost over
  its 20-step periodic plan is derived from those.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deltaconv_kernels import baselines, flops
from deltaconv_kernels.bench_fit import FlopsFit
from deltaconv_kernels.bench_timing import PeakMemory, Record, RoundRobin, Timing, interleaved, spread, synchronizer
from deltaconv_kernels.modules import DeltaConvBlock
from deltaconv_kernels.ops import resolve


@dataclass(frozen=True)
class Resolution:
    label: str
    height: int
    width: int

    @property
    def pixels(self) -> int:
        return self.height * self.width


# The paper's sizes: its "4K" is 3840x2160 (UHD), 8K 7680x4320, 16K 15360x8640.
RESOLUTIONS = (
    Resolution("512", 512, 512), Resolution("1K", 1024, 1024), Resolution("2K", 2048, 2048),
    Resolution("4K", 3840, 2160), Resolution("8K", 7680, 4320), Resolution("16K", 15360, 8640),
)
METHODS = flops.METHODS
# Layer shapes: those of flops.py, and PixArt with the paper's largest kernel, K = 25.
SHAPES = {**flops.LAYER_SHAPES, "pixart-k25": dataclasses.replace(flops.PIXART, name="pixart-k25", kernel_size=25)}
MODELS = ("pixart", "sd15")  # benchmarked by default; "pixart-k25" and "sdxl" on request
# DiTFastAttn step modes timed: mode -> (plan of two steps, CFG halves shared, the step that is timed).
DITFASTATTN_MODES = {
    "full": (("full", "window_residual"), False, 0),  # full attention + the window pass of the cached residual
    "window_residual": (("full", "window_residual"), False, 1),
    "share_timestep": (("full", "share_timestep"), False, 1),
    "full+cfg": (("full", "window_residual"), True, 0),
    "window_residual+cfg": (("full", "window_residual"), True, 1),
}
# Neighborhood implementations timed besides the layer's own choice (on the CPU the tiled reference, which is faster
# there than inductor's flex kernel; NATTEN when installed): compiled flex_attention with the 2-D window block mask.
NEIGHBORHOOD_VARIANTS = ("flex",)
DITFASTATTN_PLAN = baselines.DiTFastAttnSchedule.periodic(20, 5)  # what the schedule average is taken over
# Peak working memory in units of B*N*C elements (input included), from the code paths; measured values are
# in each record's peak_bytes.
MEMORY_FACTOR = {"deltaconv": 5.0, "sdpa": 8.0, "neighborhood": 8.0, "ditfastattn": 9.0, "linfusion": 12.0,
                 "mediator": 12.0}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


def resolution(label: str) -> Resolution:
    for r in RESOLUTIONS:
        if r.label.lower() == str(label).lower():
            return r
    raise ValueError(f"resolution must be one of {[r.label for r in RESOLUTIONS]}, got {label!r}")


@dataclass(frozen=True)
class Case:
    method: str
    model: str
    res: Resolution
    # "forward"; a DiTFastAttn step mode for "ditfastattn"; for "neighborhood", a forced implementation ("flex")
    # beside "forward", the layer's own choice (its fastest on the device)
    mode: str = "forward"

    @property
    def impl(self) -> str | None:
        return self.mode if self.method == "neighborhood" and self.mode != "forward" else None

    @property
    def shape(self) -> flops.LayerShape:
        return SHAPES[self.model]

    @property
    def tokens(self) -> tuple[int, int]:
        return self.shape.tokens(self.res.height, self.res.width)

    @property
    def name(self) -> str:
        mode = f"[{self.mode}]" if self.mode != "forward" else ""
        return f"{self.method}{mode}-{self.model}-{self.res.label}"


@dataclass
class BenchConfig:
    device: torch.device
    dtype: torch.dtype
    batch: int = 2                  # classifier-free guidance, as in the paper
    max_call_s: float = 6.0         # the one cap on a call's predicted time, for every method
    budget_s: float = 900.0
    rounds: int = 5
    warmup: int = 1
    mem_fraction: float = 0.8

    @classmethod
    def for_device(cls, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                   batch: int | None = None, **kw) -> BenchConfig:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was requested but torch.cuda.is_available() is False")
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        kw.setdefault("max_call_s", 2.0 if device.type == "cuda" else 6.0)
        return cls(device=device, dtype=dtype, batch=batch or 2, **kw)


def cases_for(model: str, res: Resolution, methods=METHODS) -> list[Case]:
    """The cases of one group, ΔConvBlock first (the speedups are taken over it)."""
    out = []
    for m in methods:
        if m == "ditfastattn":
            out += [Case(m, model, res, mode) for mode in DITFASTATTN_MODES]
        elif m == "neighborhood":
            out += [Case(m, model, res)] + [Case(m, model, res, impl) for impl in NEIGHBORHOOD_VARIANTS]
        else:
            out.append(Case(m, model, res))
    return sorted(out, key=lambda c: c.method != "deltaconv")


def groups(models=MODELS, max_resolution: str = "2K", methods=METHODS, min_resolution: str = "512"
           ) -> list[list[Case]]:
    """Every (model, resolution) group in run order: sizes increasing, so predictions can use smaller sizes."""
    top, bottom = resolution(max_resolution).pixels, resolution(min_resolution).pixels
    return [cases_for(model, r, methods) for r in RESOLUTIONS if bottom <= r.pixels <= top for model in models]


# ---- layers, calls, FLOPs ---------------------------------------------------------------------------------
def build_layer(method: str, model: str, device, dtype, mode: str = "forward", impl: str | None = None):
    """The layer for (method, model): returns (module, implementation) naming what runs. `impl` forces the
    neighborhood implementation (natten, flex, reference)."""
    shape = SHAPES[model]
    c, heads, k = shape.channels, shape.heads, shape.kernel_size
    factory = {"device": device, "dtype": dtype}
    if method == "deltaconv":
        gate = "sigmoid" if model.startswith("pixart") else "scaled"  # released PixArt models: sigmoid gate
        return DeltaConvBlock(c, kernel_size=k, gate=gate, backend=None, **factory).eval(), \
            resolve(None, torch.device(device).type)
    if method == "sdpa":
        return baselines.SDPASelfAttention(c, heads, **factory).eval(), "torch-sdpa"
    if method == "neighborhood":
        layer = baselines.NeighborhoodAttention(c, heads, kernel_size=k, impl=impl, **factory)
        return layer.eval(), layer.impl
    if method == "ditfastattn":
        plan, share, _ = DITFASTATTN_MODES[mode]
        schedule = baselines.DiTFastAttnSchedule(plan, (share, share))
        layer = baselines.DiTFastAttnAttention(c, heads, schedule=schedule, **factory)
        return layer.eval(), getattr(layer, "window_impl", "reference")
    if method == "linfusion":
        return baselines.LinFusionAttention(c, heads, **factory).eval(), "torch"
    if method == "mediator":
        return baselines.MediatorAttention(c, heads, **factory).eval(), "torch"
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def make_call(case: Case, cfg: BenchConfig, x: torch.Tensor | None = None, built=None):
    """A no-argument callable running one forward of the case's layer (synchronised), and its implementation.
    `built`: the case's (layer, implementation) from `_build`, when already made."""
    layer, impl = built if built is not None else _build(case, cfg)
    h, w = case.tokens
    if x is None:
        x = torch.empty(cfg.batch, h * w, case.shape.channels, device=cfg.device, dtype=cfg.dtype).uniform_(-1, 1)
    kwargs = {}
    if case.method == "ditfastattn":  # install the caches the step before would have left
        _, _, step = DITFASTATTN_MODES[case.mode]
        layer.set_cache(residual=torch.empty_like(x).uniform_(-0.1, 0.1), last_output=torch.empty_like(x))
        kwargs["step"] = step
    sync = synchronizer(cfg.device)

    def call():
        with torch.inference_mode():
            layer(x, size=(h, w), **kwargs)
        sync()

    return call, impl


def case_flops(case: Case, batch: int, impl: str) -> tuple[float, float]:
    """(executed by `impl`, ideal) FLOPs of one call of the case."""
    h, w = case.tokens
    shape = case.shape
    if case.method == "ditfastattn":
        plan, share, step = DITFASTATTN_MODES[case.mode]
        b = batch // 2 if share else batch

        def one_step(window_impl):
            f = flops.ditfastattn_step(h, w, shape.channels, plan[step], batch=b, window_impl=window_impl)
            if plan[step] == "full":  # the full step also runs the window pass of the residual
                f = f + flops.Flops(attention=flops.ditfastattn_step(
                    h, w, shape.channels, "window_residual", batch=b, window_impl=window_impl).attention)
            return f.total

        return one_step(impl), one_step(None)
    ideal = flops.method_flops(case.method, shape, case.res.height, case.res.width, batch)
    executed = flops.executed_flops(case.method, shape, case.res.height, case.res.width, batch, impl)
    return executed.total, ideal.total


# ---- memory -----------------------------------------------------------------------------------------------
def estimate_memory_bytes(case: Case, cfg: BenchConfig) -> int:
    h, w = case.tokens
    elems = cfg.batch * h * w * case.shape.channels
    return int(MEMORY_FACTOR[case.method] * elems * torch.empty((), dtype=cfg.dtype).element_size())


def available_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read MemAvailable from /proc/meminfo")


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
            built[c] = _build(c, cfg)
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
                                 peak_bytes=mem.peak_bytes, extra={"peak_method": mem.method,
                                                                   "round_seconds": list(t.seconds)})
        planner.records.append(rec)
        out.append(rec)
    planner.speedups += speedups(group[0].model, group[0].res.label, dtype_name(cfg.dtype), cfg.batch,
                                 {c.name: (c, timings[c.name]) for c in runnable})
    del calls, rr, x
    gc.collect()
    return out


def _build(case: Case, cfg: BenchConfig):
    """The case's (layer, implementation); building a layer is cheap next to its input."""
    return build_layer(case.method, case.model, cfg.device, cfg.dtype, case.mode, case.impl)


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
                    "rounds": ratios.rounds, "processes": 1})
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
                extra={"derived_from": {p.mode: n for p, n in parts}}))
    return out


def run_grid(cfg: BenchConfig, models=MODELS, max_resolution: str = "2K", methods=METHODS, progress=True,
             min_resolution: str = "512"):
    """The whole grid in this process: (records incl. DiTFastAttn schedule averages, speedups)."""
    from tqdm import tqdm

    planner = Planner(cfg)
    todo = groups(models, max_resolution, methods, min_resolution)
    bar = tqdm(todo, unit="group", disable=not progress)
    for group in bar:
        bar.set_postfix_str(f"{group[0].model} {group[0].res.label}")
        for rec in measure_group(group, planner):
            if rec.seconds_median is None or rec.extrapolated:
                tqdm.write(f"skip {rec.method}[{rec.mode}] {rec.model} {rec.resolution}: {rec.reason}")
    return planner.records + schedule_averages(planner.records), planner.speedups


# ---- several fresh processes ------------------------------------------------------------------------------
def merge_processes(runs: list[dict]) -> tuple[list[Record], list[dict]]:
    """Per case, the median of the process medians (their spread in extra); extrapolated cases are re-fitted on the
    merged measured points; speedups likewise, per (model, resolution, method, mode)."""
    by_case: dict[tuple, list[Record]] = {}
    for run in runs:
        for d in run["results"]:
            r = Record(**d)
            by_case.setdefault((r.method, r.mode, r.model, r.resolution, r.dtype, r.batch), []).append(r)
    merged = []
    for recs in by_case.values():
        measured = [r for r in recs if not r.extrapolated and r.seconds_median is not None]
        base = recs[0]
        if len(measured) == len(recs):
            s = spread(r.seconds_median for r in measured)
            merged.append(dataclasses.replace(
                base, seconds_median=s["median"], seconds_iqr=statistics.median(r.seconds_iqr or 0 for r in measured),
                rounds=sum(r.rounds for r in measured), processes=len(measured),
                peak_bytes=max((r.peak_bytes or 0) for r in measured) or None,
                extra={"process_medians": [r.seconds_median for r in measured], "spread": s}))
        else:  # not measured in every process: extrapolated or skipped, re-fitted below
            merged.append(dataclasses.replace(base, processes=len(recs), seconds_median=None, extrapolated=False,
                                              fit=None))
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
        for d in run["speedups"]:
            sp.setdefault((d["model"], d["resolution"], d["dtype"], d["batch"], d["over"], d["mode"]), []).append(d)
    speeds = []
    for ds in sp.values():
        s = spread(d["speedup_median"] for d in ds)
        speeds.append({**ds[0], "speedup_median": s["median"], "speedup_min": s["min"], "speedup_max": s["max"],
                       "speedup_iqr": statistics.median(d["speedup_iqr"] for d in ds), "processes": len(ds),
                       "rounds": sum(d["rounds"] for d in ds)})
    return out + schedule_averages(out), speeds


# ---- environment and JSON ---------------------------------------------------------------------------------
def environment(cfg: BenchConfig) -> dict:
    dev = torch.cuda.get_device_name(cfg.device) if cfg.device.type == "cuda" else _cpu_name()
    return {"device": dev, "device_type": cfg.device.type, "dtype": dtype_name(cfg.dtype), "batch": cfg.batch,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "max_call_s": cfg.max_call_s, "budget_s": cfg.budget_s, "rounds": cfg.rounds, "warmup": cfg.warmup}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), platform.processor())
    except OSError:
        name = platform.processor()
    return f"{name} ({os.cpu_count()} logical CPUs)"


def write_json(path: Path, env: dict, records: list[Record], speeds: list[dict], extra: dict | None = None) -> None:
    from deltaconv_kernels.fileio import atomic_write

    data = {"environment": env, **(extra or {}), "results": [dataclasses.asdict(r) for r in records],
            "speedups": speeds}
    payload = json.dumps(data, indent=2).encode()
    atomic_write(path, lambda f: f.write(payload))


def read_json(path: Path) -> tuple[dict, list[Record], list[dict]]:
    return parse_json(json.loads(Path(path).read_text()))


def parse_json(data: dict) -> tuple[dict, list[Record], list[dict]]:
    """(environment, records, speedups) of a loaded bench.json."""
    return data["environment"], [Record(**d) for d in data["results"]], data["speedups"]


# ---- the `deltaconv bench` subcommand ---------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default fp16 on cuda, fp32 on cpu")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default 2: classifier-free guidance)")
    parser.add_argument("--max-resolution", default="2K", help=f"one of {[r.label for r in RESOLUTIONS]}")
    parser.add_argument("--min-resolution", default="512",
                        help="smallest resolution to run (a size with nothing measured below it runs whatever its "
                             "time: the cap needs a smaller measured size to predict from)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {tuple(SHAPES)}")
    parser.add_argument("--out", default="bench_out", help="directory for bench.json and latency.png")
    parser.add_argument("--time-budget", type=float, default=900.0, help="seconds for the whole run (per process)")
    parser.add_argument("--max-call", type=float, default=None,
                        help="longest predicted time (s) of one call, the same for every method, before a case is "
                             "skipped and extrapolated instead (default 6 on cpu, 2 on cuda)")
    parser.add_argument("--rounds", type=int, default=5, help="timed round-robin rounds per group (>= 5)")
    parser.add_argument("--processes", type=int, default=1,
                        help="repeat the grid in this many fresh processes and report the median of their medians")
    parser.add_argument("--end-to-end", action="store_true",
                        help="time whole denoiser steps, one layer's forward+backward and torch.compile instead "
                             "of the layer grid (deltaconv_kernels.bench_e2e)")
    from deltaconv_kernels import bench_e2e

    bench_e2e.add_arguments(parser)


def _split(text: str, allowed, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise ValueError(f"--{what} must be a comma-separated subset of {tuple(allowed)}, got {text!r}")
    return items


def run(args: argparse.Namespace) -> int:
    from deltaconv_kernels import bench_report
    from deltaconv_kernels.cli import check_at_least, check_device, check_output_dir, check_positive

    if args.end_to_end:
        from deltaconv_kernels import bench_e2e

        return bench_e2e.run(args)
    methods = _split(args.methods, METHODS, "methods")
    models = _split(args.models, SHAPES, "models")
    device = check_device(args.device)
    check_at_least(args.batch, 1, "--batch")
    check_at_least(args.rounds, 5, "--rounds")
    check_at_least(args.processes, 1, "--processes")
    check_positive(args.time_budget, "--time-budget")
    check_positive(args.max_call, "--max-call")
    if resolution(args.min_resolution).pixels > resolution(args.max_resolution).pixels:
        raise ValueError(f"--min-resolution {args.min_resolution} is above --max-resolution {args.max_resolution}")
    out = check_output_dir(args.out, "--out")
    kw = {"max_call_s": args.max_call} if args.max_call else {}
    cfg = BenchConfig.for_device(device, DTYPES[args.dtype] if args.dtype else None, args.batch,
                                 budget_s=args.time_budget, rounds=args.rounds, **kw)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(cfg)
    if args.processes > 1:
        runs = [_run_fresh_process(args, out / f"process-{i}", i, args.processes) for i in range(args.processes)]
        records, speeds = merge_processes(runs)
        env["processes"] = args.processes
    else:
        records, speeds = run_grid(cfg, models, args.max_resolution, methods, min_resolution=args.min_resolution)
    command = "deltaconv bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "deltaconv bench"
    write_json(out / "bench.json", env, records, speeds, {"command": command})
    bench_report.plot(records, out / "latency.png", f"{env['device_type']} {env['dtype']} B={cfg.batch}")
    print(bench_report.format_text(records, speeds, env))
    print(f"wrote {out / 'bench.json'} and {out / 'latency.png'}")
    return 0


def _run_fresh_process(args, out: Path, i: int, n: int) -> dict:
    argv = [sys.executable, "-m", "deltaconv_kernels.cli", "bench", "--device", args.device, "--batch",
            str(args.batch), "--max-resolution", args.max_resolution, "--min-resolution", args.min_resolution,
            "--methods", args.methods, "--models",
            args.models, "--out", str(out), "--time-budget", str(args.time_budget), "--rounds", str(args.rounds)]
    argv += ["--dtype", args.dtype] if args.dtype else []
    argv += ["--max-call", str(args.max_call)] if args.max_call else []
    print(f"[bench] process {i + 1}/{n}: {' '.join(argv[1:])}", flush=True)
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise OSError(f"the benchmark process {i + 1}/{n} failed with exit code {proc.returncode}")
    return json.loads((out / "bench.json").read_text())
