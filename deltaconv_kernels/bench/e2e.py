"""End-to-end benchmarks (`deltaconv bench e2e`): whole denoiser steps of the full-size PixArt-Σ and SD1.5
architectures, forward+backward of one attention layer per method, and torch.compile of the eager ΔConv block and
of SDPA. All timing and memory go through `timing` (interleaved rounds, peak memory on a call of its own) and
every case is a `records.Record`.

Parts:
- "step": one denoiser forward (inference mode) of the model built from its public config with seeded random
  weights, at batch `--batch` (2 = classifier-free guidance), latents = image / 8, random text states of the
  pipeline's shape (PixArt-Σ: 300 T5 tokens x 4096; SD1.5: 77 CLIP tokens x 768). Variants: the original
  attention (diffusers' default processor, SDPA), the ΔConv conversion (`convert`, released kernel sizes,
  automatic backend) and every `replace_attention` baseline. The variants share one model: each keeps its own
  `attn1` modules and they are swapped in before its call, so the rest of the weights are common and only one
  model is in memory. DiTFastAttn is timed at its compressed step (window attention + the residual its full step
  cached, primed once per resolution), its compressed step (`DITFASTATTN_STEP`; the layer grid times every mode).
- "layer-backward": forward+backward of `layers.build_layer` for every method at the PixArt-1024 layer shape
  (64 x 64 tokens, C = 1152).
- "compile": the same shape, forward: ΔConvBlock on its pure-PyTorch backend eager and under torch.compile, on
  the automatic backend (C++ on CPU), and SDPA eager and compiled. The compile time (first call) is reported in
  `extra["compile_s"]`, outside the timed rounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from deltaconv_kernels import flops
from deltaconv_kernels.baselines import DiTFastAttnSchedule, SDPASelfAttention
from deltaconv_kernels.bench.config import E2E_PARTS as PARTS
from deltaconv_kernels.bench.config import E2E_RESOLUTIONS as DEFAULT_RESOLUTIONS
from deltaconv_kernels.bench.config import E2E_STEP_METHODS as STEP_METHODS
from deltaconv_kernels.bench.config import METHODS, MODELS, VAE_FACTOR, BenchConfig
from deltaconv_kernels.bench.denoisers import FULL_CONFIGS, TINY_CONFIGS
from deltaconv_kernels.bench.layers import build_layer
from deltaconv_kernels.bench.records import Record, environment
from deltaconv_kernels.bench.timing import interleaved, peak_memory, synchronizer
from deltaconv_kernels.dtypes import dtype_name
from deltaconv_kernels.integrations.diffusers import convert, replace_attention
from deltaconv_kernels.modules import DeltaConvBlock
from deltaconv_kernels.ops import resolve
from deltaconv_kernels.resolutions import Resolution, resolution

DITFASTATTN_STEP = "window_residual"  # DiTFastAttn is timed at its compressed step here
LAYER_MODEL, LAYER_RESOLUTION = "pixart", "1K"  # the layer parts' shape: PixArt-Σ at 1024² (64 x 64 tokens)
LAYER_WARMUP = 1  # the layer parts are cheap: one more untimed round after the peak-memory call (autograd's
# and the allocator's first-round growth otherwise lands in the first timed round)
TINY_LAYER_TOKENS = (8, 8)  # --tiny: the layer parts' token map
TINY_IMAGE_DIVISOR = 8  # --tiny: images this much smaller (512² -> 64², an 8 x 8 latent)
TEXT_TOKENS = {"pixart": 300, "sd15": 77}  # PixArtSigmaPipeline max_sequence_length; CLIP's model_max_length

# ---- whole models ------------------------------------------------------------------------------------------
def build_model(model: str, device, dtype: torch.dtype, tiny: bool = False, seed: int = 0) -> nn.Module:
    """The denoiser of `model` from its config (full size, or the tiny one), seeded random weights, eval mode."""
    import diffusers  # optional (the "diffusers" extra): imported when a model is built

    cfg = dict((TINY_CONFIGS if tiny else FULL_CONFIGS)[model])
    cls = getattr(diffusers, cfg.pop("_class_name"))
    torch.manual_seed(seed)
    return cls(**cfg).to(device=device, dtype=dtype).eval()


def model_inputs(model: str, denoiser: nn.Module, height: int, width: int, batch: int, seed: int = 0) -> dict:
    """Keyword inputs of one denoiser call as the model's pipeline passes them (random latents and text)."""
    cfg = denoiser.config
    if height % VAE_FACTOR or width % VAE_FACTOR:
        raise ValueError(f"image {height}x{width} is not a multiple of the VAE factor {VAE_FACTOR}")
    g = torch.Generator().manual_seed(seed)
    dev, dt = denoiser.device, denoiser.dtype
    latents = torch.randn(batch, cfg.in_channels, height // VAE_FACTOR, width // VAE_FACTOR, generator=g)
    text_dim = cfg.caption_channels if model == "pixart" else cfg.cross_attention_dim
    text = torch.randn(batch, TEXT_TOKENS[model], text_dim, generator=g)
    inputs = {"hidden_states" if model == "pixart" else "sample": latents.to(dev, dt),
              "encoder_hidden_states": text.to(dev, dt), "return_dict": False}
    if model == "pixart":  # PixArtSigmaPipeline: timestep expanded to the batch, no micro-conditions, text mask
        inputs.update(timestep=torch.full((batch,), 999, device=dev),
                      added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                      encoder_attention_mask=torch.ones(batch, TEXT_TOKENS[model], device=dev))
    else:
        inputs["timestep"] = torch.tensor(999, device=dev)
    return inputs


class AttentionVariants:
    """The self-attention `attn1` modules of several methods for one model: `install(method)` puts that method's
    modules in every site (a block whose `attn1` the conversions replace, named by that `attn1`'s path). Built by
    converting the model once per method and taking its new modules back out; the size hooks the conversions
    attach are shared (one per owner), so every variant sees the (H, W) map."""

    def __init__(self, model_name: str, model: nn.Module, methods, backend: str | None = None):
        self.model = model
        self.blocks = {f"{name}.attn1": m for name, m in model.named_modules()
                       if isinstance(getattr(m, "attn1", None), nn.Module)}
        original = {name: block.attn1 for name, block in self.blocks.items()}
        processor = type(next(iter(original.values())).processor).__name__
        self.modules = {"sdpa": original}
        self.implementations = {"sdpa": f"diffusers {processor} (torch SDPA)"}
        self.ditfastattn_layers: list = []
        for method in methods:
            if method == "sdpa":
                continue
            if method == "deltaconv":
                convert(model, "released", backend=backend)
                impl = resolve(backend, model.device.type, model.dtype)
            elif method == "ditfastattn":
                schedule = _ditfastattn_schedule()
                replace_attention(model, method, schedule=schedule)
                impl = f"torch, {DITFASTATTN_STEP} step"
            else:
                kw = {"kernel_size": flops.LAYER_SHAPES[model_name].kernel_size} if method == "neighborhood" else {}
                replace_attention(model, method, **kw)
                impl = "torch"
            replaced = {name: block.attn1 for name, block in self.blocks.items() if block.attn1 is not original[name]}
            self.blocks = {name: self.blocks[name] for name in replaced}  # the sites: what every conversion replaces
            self.modules[method] = replaced
            if method == "neighborhood":
                impl = next(iter(self.modules[method].values())).layer.impl
            if method == "ditfastattn":
                self.ditfastattn_layers = [m.layer for m in self.modules[method].values()]
            self.implementations[method] = impl
            self.install("sdpa")
        self.methods = [m for m in methods if m in self.modules]

    @property
    def sites(self) -> list[str]:
        return list(self.blocks)

    def install(self, method: str) -> None:
        for name, block in self.blocks.items():
            block.attn1 = self.modules[method][name]

    def prime(self, inputs: dict) -> None:
        """Run DiTFastAttn's full step once at these inputs, so its compressed steps have the residual cached."""
        if not self.ditfastattn_layers:
            return
        self.install("ditfastattn")
        for layer in self.ditfastattn_layers:
            layer.reset()
        with torch.inference_mode():
            self.model(**inputs)
        self.install("sdpa")

    def call(self, method: str, inputs: dict, sync: Callable[[], None]) -> Callable[[], None]:
        def step():
            self.install(method)
            for layer in self.ditfastattn_layers if method == "ditfastattn" else ():
                layer.step = 1  # the compressed step of the (full, compressed) plan, every time
            with torch.inference_mode():
                self.model(**inputs)
            sync()
        return step


def _ditfastattn_schedule():
    return DiTFastAttnSchedule(("full", DITFASTATTN_STEP))


# ---- measuring -------------------------------------------------------------------------------------------
def measure(calls: dict[str, Callable[[], object]], rounds: int, device, warmup: int = 0) -> dict[str, tuple]:
    """{name: (Timing, peak bytes, how measured)}. The peak-memory call of each callable, outside the rounds, is
    its first warm-up (a whole denoiser step on a CPU takes up to a minute: by default no call is spent twice);
    then `warmup` more untimed rounds and `rounds` interleaved timed rounds."""
    peaks = {name: peak_memory(call, device) for name, call in calls.items()}
    timings = interleaved(calls, rounds, warmup=warmup)
    return {name: (timings[name], *peaks[name]) for name in calls}


def _record(method, model, res, cfg: BenchConfig, impl, measured, mode, flops_ideal=0.0, **extra) -> Record:
    timing, peak, how = measured
    return Record(method=method, model=model, resolution=res.label, height=res.height, width=res.width,
                  dtype=dtype_name(cfg.dtype), batch=cfg.batch, unstable=timing.unstable, implementation=impl,
                  seconds_median=timing.median,
                  seconds_iqr=timing.iqr, rounds=timing.rounds, processes=1, peak_bytes=peak, flops_executed=0.0,
                  flops_ideal=flops_ideal, extrapolated=False, mode=mode,
                  extra={"seconds": list(timing.seconds), "peak_memory": how, **extra})


def step_records(model_name: str, resolutions, cfg: BenchConfig, methods=STEP_METHODS, tiny: bool = False,
                 bar=None) -> list[Record]:
    """Denoiser-step records of one model at each resolution, its variants interleaved."""
    device, dtype = cfg.device, cfg.dtype
    t0 = time.perf_counter()
    model = build_model(model_name, device, dtype, tiny=tiny)
    variants = AttentionVariants(model_name, model, methods)
    built_s = time.perf_counter() - t0
    sync = synchronizer(device)
    records = []
    for res in resolutions:
        if bar is not None:
            bar.set_postfix_str(f"step {model_name} {res.label}")
        if tiny:  # tiny models get tiny images too
            res = Resolution(f"{res.label} (tiny)", res.height // TINY_IMAGE_DIVISOR,
                                   res.width // TINY_IMAGE_DIVISOR)
        inputs = model_inputs(model_name, model, res.height, res.width, cfg.batch)
        variants.prime(inputs)
        calls = {m: variants.call(m, inputs, sync) for m in variants.methods}
        for method, measured in measure(calls, cfg.rounds, device).items():
            records.append(_record(method, model_name, res, cfg, variants.implementations[method], measured,
                                   "denoiser step", tiny=tiny, model_build_s=built_s))
        if bar is not None:
            bar.update()
    del variants, model
    return records


def _layer_case(tiny: bool):
    shape = flops.LAYER_SHAPES[LAYER_MODEL]
    res = resolution(LAYER_RESOLUTION)
    h, w = TINY_LAYER_TOKENS if tiny else shape.tokens(res.height, res.width)
    if tiny:
        res = Resolution("tiny", h * shape.pixels_per_token, w * shape.pixels_per_token)
    return shape, res, h, w


def layer_backward_records(cfg: BenchConfig, tiny: bool = False) -> list[Record]:
    """Forward+backward of one layer of every method at the PixArt-1024 layer shape, interleaved."""
    device, dtype, batch = cfg.device, cfg.dtype, cfg.batch
    shape, res, h, w = _layer_case(tiny)
    sync = synchronizer(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, h * w, shape.channels, generator=g).to(device, dtype).requires_grad_(True)
    grad = torch.randn(batch, h * w, shape.channels, generator=g).to(device, dtype)
    calls, impls = {}, {}
    for method in METHODS:
        torch.manual_seed(0)
        mode = DITFASTATTN_STEP if method == "ditfastattn" else "forward"
        layer, impls[method] = build_layer(method, LAYER_MODEL, device, dtype, mode)
        kw = {}
        if method == "ditfastattn":  # its compressed step, as the layer grid times it
            layer.set_cache(residual=torch.randn(x.shape, generator=g).to(device, dtype) * 0.1)
            kw = {"step": 1}
        calls[method] = _backward_call(layer, x, grad, (h, w), kw, sync)
    return [_record(m, LAYER_MODEL, res, cfg, impls[m], measured, "forward+backward", tokens=[h, w],
                    channels=shape.channels)
            for m, measured in measure(calls, cfg.rounds, device, warmup=LAYER_WARMUP).items()]


def _backward_call(layer, x, grad, size, kw, sync):
    def call():
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x, size=size, **kw).backward(grad)
        sync()
    return call


def compile_records(cfg: BenchConfig, tiny: bool = False, backend: str = "inductor") -> list[Record]:
    """ΔConvBlock (pure-PyTorch backend) and SDPA, eager and compiled, plus ΔConvBlock on the automatic backend:
    forwards at the PixArt-1024 layer shape, interleaved; compile time reported apart."""
    device, dtype, batch = cfg.device, cfg.dtype, cfg.batch
    shape, res, h, w = _layer_case(tiny)
    factory = {"device": device, "dtype": dtype}
    torch.manual_seed(0)
    # sigmoid gate: the released PixArt models' (as layers.build_layer builds the PixArt ΔConvBlock)
    eager_block = DeltaConvBlock(shape.channels, kernel_size=shape.kernel_size, gate="sigmoid", backend="torch",
                                 **factory).eval()
    auto_block = DeltaConvBlock(shape.channels, kernel_size=shape.kernel_size, gate="sigmoid", backend=None,
                                **factory).eval()
    auto_block.load_state_dict(eager_block.state_dict())
    sdpa = SDPASelfAttention(shape.channels, shape.heads, **factory).eval()
    layers = {  # name: (method, implementation, module, compiled)
        "deltaconv-eager": ("deltaconv", "torch (eager)", eager_block, False),
        "deltaconv-compiled": ("deltaconv", f"torch + torch.compile({backend})",
                               torch.compile(eager_block, backend=backend), True),
        "deltaconv-auto": ("deltaconv", resolve(None, device.type, dtype), auto_block, False),
        "sdpa-eager": ("sdpa", "torch-sdpa (eager)", sdpa, False),
        "sdpa-compiled": ("sdpa", f"torch-sdpa + torch.compile({backend})", torch.compile(sdpa, backend=backend),
                          True),
    }
    x = torch.randn(batch, h * w, shape.channels, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    sync = synchronizer(device)
    calls, compile_s = {}, {}
    for name, (_, _, module, compiled) in layers.items():
        calls[name] = _forward_call(module, x, (h, w), sync)
        if compiled:  # the first call compiles: timed here, outside the rounds
            t0 = time.perf_counter()
            calls[name]()
            compile_s[name] = time.perf_counter() - t0
    records = []
    for name, measured in measure(calls, cfg.rounds, device, warmup=LAYER_WARMUP).items():
        method, impl, _, _ = layers[name]
        ideal = flops.method_flops(method, shape, res.height, res.width, batch).total if not tiny else 0.0
        extra = {"compile_s": compile_s[name]} if name in compile_s else {}
        records.append(_record(method, LAYER_MODEL, res, cfg, impl, measured, "forward",
                               flops_ideal=ideal, tokens=[h, w], channels=shape.channels, **extra))
    return records


def _forward_call(module, x, size, sync):
    def call():
        with torch.inference_mode():
            module(x, size=size)
        sync()
    return call


def run_e2e(cfg: BenchConfig, models=MODELS, parts=PARTS, methods=STEP_METHODS, resolutions=DEFAULT_RESOLUTIONS,
            tiny: bool = False, compile_backend: str = "inductor", progress: bool = True) -> tuple[list[Record], dict]:
    """The chosen parts, in order: (records, environment block)."""
    from tqdm import tqdm  # optional (the "bench" extra): the library code imports without it

    resolutions = [r if isinstance(r, Resolution) else resolution(r) for r in resolutions]
    methods = [m for m in STEP_METHODS if m in methods]
    total = (len(models) * len(resolutions) if "step" in parts else 0) + \
        sum(p in parts for p in ("layer-backward", "compile"))
    t0 = time.perf_counter()
    records: list[Record] = []
    with tqdm(total=total, unit="case", disable=not progress) as bar:
        if "step" in parts:
            for model in models:
                records += step_records(model, resolutions, cfg, methods, tiny, bar)
        if "layer-backward" in parts:
            bar.set_postfix_str("layer-backward")
            records += layer_backward_records(cfg, tiny)
            bar.update()
        if "compile" in parts:
            bar.set_postfix_str("compile")
            records += compile_records(cfg, tiny, compile_backend)
            bar.update()
    env = {k: v for k, v in environment(cfg).items() if k not in ("max_call_s", "budget_s")}
    env.update(wall_s=time.perf_counter() - t0, tiny=tiny, rounds=cfg.rounds, parts=list(parts), models=list(models),
               methods=methods, resolutions=[r.label for r in resolutions], compile_backend=compile_backend)
    return records, env
