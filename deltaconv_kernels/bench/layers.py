"""Building the layer of each method and the call the benchmarks time, the FLOPs of a call (flops.py), and the
memory estimate that keeps a case off a machine it would not fit."""

from __future__ import annotations

import torch

from deltaconv_kernels import baselines, flops
from deltaconv_kernels.bench.cases import Case
from deltaconv_kernels.bench.config import DITFASTATTN_MODES, METHODS, SHAPES, BenchConfig
from deltaconv_kernels.bench.timing import synchronizer
from deltaconv_kernels.modules import DeltaConvBlock
from deltaconv_kernels.ops import resolve


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
    `built`: the case's (layer, implementation) from `build`, when already made."""
    layer, impl = built if built is not None else build(case, cfg)
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


# Peak working memory in units of B*N*C elements (input included), from the code paths; measured values are
# in each record's peak_bytes.
MEMORY_FACTOR = {"deltaconv": 5.0, "sdpa": 8.0, "neighborhood": 8.0, "ditfastattn": 9.0, "linfusion": 12.0,
                 "mediator": 12.0}


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


def build(case: Case, cfg: BenchConfig):
    """The case's (layer, implementation); building a layer is cheap next to its input."""
    return build_layer(case.method, case.model, cfg.device, cfg.dtype, case.mode, case.impl)

