"""What the benchmarks measure and how: the methods, layer shapes and models, DiTFastAttn's timed step modes, and
`BenchConfig`, the one settings object of both the layer grid and the end-to-end benchmark."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from deltaconv_kernels import flops
from deltaconv_kernels.baselines.ditfastattn_schedule import DiTFastAttnSchedule

METHODS = flops.METHODS
# Layer shapes: those of flops.py, and PixArt with the paper's largest kernel, K = 25.
SHAPES = {**flops.LAYER_SHAPES, "pixart-k25": dataclasses.replace(flops.PIXART, name="pixart-k25", kernel_size=25)}
MODELS = ("pixart", "sd15")  # benchmarked by default (the grid's "pixart-k25" and "sdxl" on request)
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
DITFASTATTN_PLAN = DiTFastAttnSchedule.periodic(20, 5)  # what the schedule average is taken over

# The end-to-end benchmark (bench/e2e.py): its parts, the methods of its denoiser steps, their default sizes and
# default dtype per device (named here so that `bench e2e --help` lists them without importing diffusers).
E2E_PARTS = ("step", "layer-backward", "compile")
E2E_STEP_METHODS = ("sdpa", "deltaconv", "neighborhood", "ditfastattn", "linfusion", "mediator")
E2E_RESOLUTIONS = ("512", "1K")
E2E_DTYPES = {"cpu": "bf16", "cuda": "fp16"}
VAE_FACTOR = 8  # both denoisers' VAEs: latents are image / 8


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
