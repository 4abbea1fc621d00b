"""Latency of ΔConvBlock against the attention baselines, 512² up to 16K, and the `deltaconv bench` command.

This module holds everything the pytest benchmarks (benchmarks/) and the CLI share: the resolution ladder, the
layer factories, memory estimates, peak-memory measurement, the planner that decides per case whether to run
it or skip it and extrapolate its time from a power law fitted on the sizes that ran, and the table/JSON/plot
output. A case is (method, model layer shape, resolution); cases of one method run in increasing size so each
decision can use the times measured so far.

Why cases are skipped: a baseline whose predicted time for one call exceeds `max_call_s` (quadratic attention
at 4K on a CPU would take hours; 3 x `max_call_s` while the method has fewer than the 2 measured sizes a law
needs); any case whose memory estimate exceeds the free memory; any case that would
overrun the run's total time budget. ΔConvBlock is exempt from `max_call_s` (it is the method under test and
should reach 16K), not from memory or the total budget.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from deltaconv_kernels import baselines, flops
from deltaconv_kernels.bench_timing import PeakMemory
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


RESOLUTIONS = (
    # 768² is there so that a quadratic baseline too slow at 2K on a CPU still has three sizes to fit its law on.
    Resolution("512", 512, 512), Resolution("768", 768, 768), Resolution("1K", 1024, 1024),
    Resolution("2K", 2048, 2048),
    Resolution("4K", 4096, 2160), Resolution("8K", 7680, 4320), Resolution("16K", 15360, 8640),
)
METHODS = flops.METHODS  # deltaconv first: it must get the time budget before the baselines
MODELS = ("pixart", "sd15")  # benchmarked by default; "sdxl" on request
# The DiTFastAttn latency is that of its compressed step (window attention + cached residual); its full steps
# cost what SDPA costs plus a window pass.
DITFASTATTN_BENCH_MODE = "window_residual"
# Peak working memory in units of B*N*C elements (input included), from the code paths; measured values are
# recorded in extra_info. ΔConvBlock's torch reference measured 2.7 (PixArt) and 1.9 (SD1.5) over its input.
MEMORY_FACTOR = {"deltaconv": 5.0, "sdpa": 8.0, "neighborhood": 8.0, "ditfastattn": 9.0, "linfusion": 12.0,
                 "mediator": 12.0}


def resolution(label: str) -> Resolution:
    for r in RESOLUTIONS:
        if r.label.lower() == label.lower():
            return r
    raise ValueError(f"resolution must be one of {[r.label for r in RESOLUTIONS]}, got {label!r}")


@dataclass(frozen=True)
class Case:
    method: str
    model: str
    res: Resolution

    @property
    def shape(self) -> flops.LayerShape:
        return flops.LAYER_SHAPES[self.model]

    @property
    def tokens(self) -> tuple[int, int]:
        return self.shape.tokens(self.res.height, self.res.width)

    @property
    def name(self) -> str:
        return f"{self.method}-{self.model}-{self.res.label}"


@dataclass
class Result:
    method: str
    model: str
    label: str
    height: int
    width: int
    tokens: int
    seconds: float | None           # mean latency per call (measured or extrapolated)
    extrapolated: bool
    rounds: int = 0
    reason: str = ""                # why it was skipped (when extrapolated or not run)
    peak_mem_bytes: int | None = None
    peak_mem_method: str = ""
    backend: str = ""
    gflops: float = 0.0             # analytic, at this batch
    law: dict | None = None         # the power law used for extrapolation

    @property
    def pixels(self) -> int:
        return self.height * self.width

    def extra_info(self) -> dict:
        info = asdict(self)
        info["pixels"] = self.pixels
        return info


@dataclass
class BenchConfig:
    device: torch.device
    dtype: torch.dtype
    batch: int
    max_call_s: float = 6.0
    budget_s: float = 600.0
    target_case_s: float = 1.5      # time spent timing a fast case (rounds are chosen to fill it)
    max_rounds: int = 5
    mem_fraction: float = 0.8
    fit_points: int = 3             # the law is fitted on the largest this-many measured sizes
    exempt: tuple = ("deltaconv",)

    @classmethod
    def for_device(cls, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                   batch: int | None = None, **kw) -> BenchConfig:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was requested but torch.cuda.is_available() is False")
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        # batch 2 is classifier-free guidance on a GPU; on a CPU one sample keeps 16K within memory and time.
        batch = batch or (2 if device.type == "cuda" else 1)
        return cls(device=device, dtype=dtype, batch=batch, **kw)


# ---- layers and inputs ------------------------------------------------------------------------------------
def build_layer(method: str, model: str, device, dtype):
    """The layer for (method, model): returns (module, info) with info naming the implementation that runs."""
    shape = flops.LAYER_SHAPES[model]
    c, heads, k = shape.channels, shape.heads, shape.kernel_size
    factory = {"device": device, "dtype": dtype}
    if method == "deltaconv":
        gate = "sigmoid" if model == "pixart" else "scaled"  # the released PixArt models use the sigmoid gate
        layer = DeltaConvBlock(c, kernel_size=k, gate=gate, backend=None, **factory)
        info = {"backend": resolve(None, torch.device(device).type)}
    elif method == "sdpa":
        layer, info = baselines.SDPASelfAttention(c, heads, **factory), {"backend": "torch-sdpa"}
    elif method == "neighborhood":
        layer = baselines.NeighborhoodAttention(c, heads, kernel_size=k, **factory)
        info = {"backend": layer.impl}
    elif method == "ditfastattn":
        schedule = baselines.DiTFastAttnSchedule(("full", DITFASTATTN_BENCH_MODE))
        layer, info = baselines.DiTFastAttnAttention(c, heads, schedule=schedule, **factory), {"backend": "torch"}
    elif method == "linfusion":
        layer, info = baselines.LinFusionAttention(c, heads, **factory), {"backend": "torch"}
    elif method == "mediator":
        layer, info = baselines.MediatorAttention(c, heads, **factory), {"backend": "torch"}
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return layer.eval(), info


def make_call(case: Case, cfg: BenchConfig):
    """A no-argument callable running one forward of the case's layer (synchronised on CUDA), and its info."""
    layer, info = build_layer(case.method, case.model, cfg.device, cfg.dtype)
    h, w = case.tokens
    x = torch.empty(cfg.batch, h * w, case.shape.channels, device=cfg.device, dtype=cfg.dtype).uniform_(-1, 1)
    if case.method == "ditfastattn":  # time the compressed step: give it a residual as a full step would
        layer.set_cache(residual=torch.empty_like(x).uniform_(-0.1, 0.1))
    step = {"step": 1} if case.method == "ditfastattn" else {}
    sync = torch.cuda.synchronize if cfg.device.type == "cuda" else (lambda: None)

    def call():
        with torch.inference_mode():
            layer(x, size=(h, w), **step)
        sync()

    return call, info


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


# ---- scaling law and planning -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PowerLaw:
    """seconds = coeff * pixels ** exponent, fitted by least squares in log-log."""

    coeff: float
    exponent: float
    fitted_on: tuple  # the pixel counts it was fitted on

    @classmethod
    def fit(cls, pixels, seconds) -> PowerLaw:
        if len(pixels) < 2 or len(set(pixels)) < 2:
            raise ValueError(f"a power law needs at least 2 distinct sizes, got {list(pixels)}")
        xs = [math.log(p) for p in pixels]
        ys = [math.log(s) for s in seconds]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        return cls(math.exp(my - slope * mx), slope, tuple(pixels))

    def predict(self, pixels: int) -> float:
        return self.coeff * pixels ** self.exponent


@dataclass
class Decision:
    run: bool
    reason: str = ""
    predicted_s: float | None = None


@dataclass
class Planner:
    """Decides per case whether to run it, chooses rounds, and extrapolates skipped cases."""

    cfg: BenchConfig
    results: list = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)

    def measured(self, method: str, model: str) -> list[Result]:
        return sorted((r for r in self.results if r.method == method and r.model == model and not r.extrapolated
                       and r.seconds is not None), key=lambda r: r.pixels)

    def law(self, method: str, model: str) -> PowerLaw | None:
        pts = self.measured(method, model)[-self.cfg.fit_points:]
        if len({p.pixels for p in pts}) < 2:
            return None
        return PowerLaw.fit([p.pixels for p in pts], [p.seconds for p in pts])

    def predict(self, case: Case) -> float | None:
        """From the fitted law; with one measured size, scaled by the analytic FLOPs ratio; else unknown."""
        law = self.law(case.method, case.model)
        if law is not None:
            return law.predict(case.res.pixels)
        pts = self.measured(case.method, case.model)
        if not pts:
            return None
        last = pts[-1]
        f = lambda h, w: flops.method_flops(case.method, case.shape, h, w, self.cfg.batch,  # noqa: E731
                                            DITFASTATTN_BENCH_MODE).total
        return last.seconds * f(case.res.height, case.res.width) / f(last.height, last.width)

    def decide(self, case: Case) -> Decision:
        need, free = estimate_memory_bytes(case, self.cfg), available_memory_bytes(self.cfg.device)
        if need > self.cfg.mem_fraction * free:
            return Decision(False, f"needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free on "
                                   f"{self.cfg.device.type} (limit {self.cfg.mem_fraction:.0%} of free)")
        predicted = self.predict(case)
        if predicted is None:
            return Decision(True)
        # A law needs two measured sizes: until a method has them, its cap is three times higher.
        cap = self.cfg.max_call_s * (1 if len(self.measured(case.method, case.model)) >= 2 else 3)
        if case.method not in self.cfg.exempt and predicted > cap:
            return Decision(False, f"predicted {predicted:.3g} s per call > {cap:g} s allowed per call "
                                   f"(max_call_s={self.cfg.max_call_s:g}) on {self.cfg.device.type}", predicted)
        left = self.cfg.budget_s - (time.perf_counter() - self.start)
        if predicted > left:
            return Decision(False, f"predicted {predicted:.3g} s per call > {max(left, 0):.0f} s left of the "
                                   f"{self.cfg.budget_s:g} s time budget", predicted)
        return Decision(True, predicted_s=predicted)

    def rounds(self, predicted_s: float) -> int:
        return max(1, min(self.cfg.max_rounds, int(self.cfg.target_case_s / max(predicted_s, 1e-9))))

    def record(self, result: Result) -> None:
        self.results.append(result)

    def skipped(self, case: Case, reason: str) -> Result:
        """The skipped case's result, its time extrapolated when a law can be fitted (else seconds=None)."""
        law = self.law(case.method, case.model)
        res = self.new_result(case, seconds=law.predict(case.res.pixels) if law else None, extrapolated=True,
                              reason=reason if law else f"{reason}; not extrapolated: fewer than 2 measured sizes")
        res.law = asdict(law) if law else None
        self.record(res)
        return res

    def new_result(self, case: Case, **kw) -> Result:
        h, w = case.tokens
        gf = flops.method_flops(case.method, case.shape, case.res.height, case.res.width, self.cfg.batch,
                                DITFASTATTN_BENCH_MODE).total / 1e9
        return Result(case.method, case.model, case.res.label, case.res.height, case.res.width, h * w, gflops=gf,
                      **kw)


def cases(methods=METHODS, models=MODELS, max_resolution: str = "16K") -> list[Case]:
    """All cases in run order: ΔConvBlock first, each method's sizes increasing."""
    top = resolution(max_resolution).pixels
    return [Case(m, model, r) for m in methods for model in models for r in RESOLUTIONS if r.pixels <= top]


def time_call(call, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def run_case(case: Case, planner: Planner) -> Result:
    """Plan, time (calibrating first when nothing predicts the time) and record one case: the CLI's loop body."""
    decision = planner.decide(case)
    if not decision.run:
        return planner.skipped(case, decision.reason)
    call, info = make_call(case, planner.cfg)
    predicted = decision.predicted_s
    if predicted is None or predicted < planner.cfg.target_case_s:  # warm up (and calibrate) on fast cases
        predicted = time_call(call, 1)[0]
    rounds = planner.rounds(predicted)
    with PeakMemory(planner.cfg.device) as mem:
        times = time_call(call, rounds)
    res = planner.new_result(case, seconds=sum(times) / len(times), extrapolated=False, rounds=rounds,
                             peak_mem_bytes=mem.peak_bytes, peak_mem_method=mem.method, backend=info["backend"])
    planner.record(res)
    return res


# ---- output -----------------------------------------------------------------------------------------------
def format_ms(r: Result) -> str:
    if r.seconds is None:
        return "skipped"
    ms = r.seconds * 1e3
    text = f"{ms:.4g}"
    return f"~{text}*" if r.extrapolated else text


def format_table(results: list[Result], header: str = "") -> str:
    """Per model: methods x resolutions in ms; `~x*` = extrapolated from the fitted power law."""
    lines = [header] if header else []
    labels = [r.label for r in RESOLUTIONS if any(x.label == r.label for x in results)]
    for model in dict.fromkeys(r.model for r in results):
        lines.append(f"{model}: latency per call in ms (~x* = extrapolated, power law fitted on measured sizes)")
        lines.append(f"  {'method':13s} " + " ".join(f"{lab:>11s}" for lab in labels) + "   exponent  backend")
        for method in dict.fromkeys(r.method for r in results if r.model == model):
            rows = {r.label: r for r in results if r.model == model and r.method == method}
            cells = " ".join(f"{format_ms(rows[lab]) if lab in rows else '':>11s}" for lab in labels)
            exp = _exponent(results, method, model)
            backend = next((r.backend for r in rows.values() if r.backend), "")
            lines.append(f"  {method:13s} {cells}   {exp:8s}  {backend}")
    return "\n".join(lines)


def _exponent(results, method, model, fit_points: int = 3) -> str:
    pts = sorted((r for r in results if r.method == method and r.model == model and not r.extrapolated
                  and r.seconds), key=lambda r: r.pixels)[-fit_points:]
    if len({p.pixels for p in pts}) < 2:
        return "-"
    return f"{PowerLaw.fit([p.pixels for p in pts], [p.seconds for p in pts]).exponent:.2f}"


def environment(cfg: BenchConfig) -> dict:
    dev = torch.cuda.get_device_name(cfg.device) if cfg.device.type == "cuda" else _cpu_name()
    return {"device": dev, "device_type": cfg.device.type, "dtype": str(cfg.dtype).replace("torch.", ""),
            "batch": cfg.batch, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "max_call_s": cfg.max_call_s, "budget_s": cfg.budget_s}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), platform.processor())
    except OSError:
        name = platform.processor()
    return f"{name} ({os.cpu_count()} logical CPUs)"


def write_json(results: list[Result], cfg: BenchConfig, path: Path, extra: dict | None = None) -> None:
    data = {"environment": environment(cfg), **(extra or {}), "results": [r.extra_info() for r in results]}
    path.write_text(json.dumps(data, indent=2))


def plot(results: list[Result], path: Path, title: str = "") -> None:
    """Log-log latency vs pixels, one panel per model, one colour per method: measured points filled with solid
    lines, extrapolated ones hollow with dashed lines; the legend gives the fitted exponent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.model for r in results))
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 5), squeeze=False)
    for ax, model in zip(axes[0], models):
        for i, method in enumerate(dict.fromkeys(r.method for r in results if r.model == model)):
            rows = sorted((r for r in results if r.model == model and r.method == method and r.seconds),
                          key=lambda r: r.pixels)
            meas = [r for r in rows if not r.extrapolated]
            extr = [r for r in rows if r.extrapolated]
            color = f"C{i}"
            label = f"{method} (exponent {_exponent(results, method, model)})"
            if meas:
                ax.plot([r.pixels for r in meas], [r.seconds * 1e3 for r in meas], "o-", color=color, label=label)
            if extr:
                chain = meas[-1:] + extr
                ax.plot([r.pixels for r in chain], [r.seconds * 1e3 for r in chain], "--", color=color,
                        label=None if meas else label)
                ax.plot([r.pixels for r in extr], [r.seconds * 1e3 for r in extr], "o", mfc="none", color=color)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([r.pixels for r in RESOLUTIONS], [r.label for r in RESOLUTIONS])
        ax.minorticks_off()
        ax.set_xlabel("image resolution (pixels, log scale)")
        ax.set_ylabel("latency per layer call (ms)")
        ax.set_title(f"{model} self-attention layer shape" + (f" — {title}" if title else ""))
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, title="filled/solid: measured; hollow/dashed: extrapolated", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- the `deltaconv bench` subcommand ---------------------------------------------------------------------
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="default fp16 on cuda, fp32 on cpu")
    parser.add_argument("--batch", type=int, default=None, help="default 2 (CFG) on cuda, 1 on cpu")
    parser.add_argument("--max-resolution", default="16K", help=f"one of {[r.label for r in RESOLUTIONS]}")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated subset of {tuple(flops.LAYER_SHAPES)}")
    parser.add_argument("--out", default="bench_out", help="directory for bench.json and latency.png")
    parser.add_argument("--time-budget", type=float, default=600.0, help="seconds for the whole run")
    parser.add_argument("--max-call", type=float, default=None,
                        help="longest predicted time (s) of one baseline call before its size is extrapolated "
                             "instead (default 6 on cpu, 2 on cuda)")


def _split(text: str, allowed, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise ValueError(f"--{what} must be a comma-separated subset of {tuple(allowed)}, got {text!r}")
    return items


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from deltaconv_kernels.cli import check_at_least, check_device, check_output_dir, check_positive

    methods = _split(args.methods, METHODS, "methods")
    models = _split(args.models, flops.LAYER_SHAPES, "models")
    device = check_device(args.device)
    check_at_least(args.batch, 1, "--batch")
    check_positive(args.time_budget, "--time-budget")
    check_positive(args.max_call, "--max-call")
    resolution(args.max_resolution)
    out = check_output_dir(args.out, "--out")
    cfg = BenchConfig.for_device(device, DTYPES[args.dtype] if args.dtype else None, args.batch,
                                 budget_s=args.time_budget,
                                 max_call_s=args.max_call or (2.0 if device.type == "cuda" else 6.0))
    planner = Planner(cfg)
    todo = cases([m for m in METHODS if m in methods], models, args.max_resolution)
    bar = tqdm(todo, unit="case")
    for case in bar:
        bar.set_postfix_str(case.name)
        res = run_case(case, planner)
        if res.extrapolated:
            tqdm.write(f"skip {case.name}: {res.reason}")
    out.mkdir(parents=True, exist_ok=True)
    env = environment(cfg)
    header = (f"device={env['device']} dtype={env['dtype']} batch={cfg.batch} threads={env['threads']} "
              f"torch={env['torch']}")
    print(format_table(planner.results, header))
    print(flops.format_table1())
    write_json(planner.results, cfg, out / "bench.json")
    plot(planner.results, out / "latency.png", f"{env['device_type']} {env['dtype']} B={cfg.batch}")
    print(f"wrote {out / 'bench.json'} and {out / 'latency.png'}")
    return 0
