"""End-to-end benchmarks (`deltaconv bench --end-to-end`): whole denoiser steps of the full-size PixArt-Σ and
SD1.5 architectures, forward+backward of one attention layer per method, and torch.compile of the eager ΔConv
block and of SDPA. All timing and memory go through `bench_timing` (interleaved rounds, peak memory on a call of
its own) and every case is a `bench_timing.Record`.

Parts:
- "step": one denoiser forward (inference mode) of the model built from its public config with seeded random
  weights, at batch `--batch` (2 = classifier-free guidance), latents = image / 8, random text states of the
  pipeline's shape (PixArt-Σ: 300 T5 tokens x 4096; SD1.5: 77 CLIP tokens x 768). Variants: the original
  attention (diffusers' default processor, SDPA), the ΔConv conversion (`convert`, released kernel sizes,
  automatic backend) and every `replace_attention` baseline. The variants share one model: each keeps its own
  `attn1` modules and they are swapped in before its call, so the rest of the weights are common and only one
  model is in memory. DiTFastAttn is timed at its compressed step (window attention + the residual its full step
  cached, primed once per resolution), its compressed step (`DITFASTATTN_STEP`; the layer grid times every mode).
- "layer-backward": forward+backward of `bench.build_layer` for every method at the PixArt-1024 layer shape
  (64 x 64 tokens, C = 1152).
- "compile": the same shape, forward: ΔConvBlock on its pure-PyTorch backend eager and under torch.compile, on
  the automatic backend (C++ on CPU), and SDPA eager and compiled. The compile time (first call) is reported in
  `extra["compile_s"]`, outside the timed rounds.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from deltaconv_kernels import bench, flops
from deltaconv_kernels.bench_timing import Record, interleaved, peak_memory, synchronizer
from deltaconv_kernels.fileio import atomic_write

MODELS = ("pixart", "sd15")
PARTS = ("step", "layer-backward", "compile")
DEFAULT_RESOLUTIONS = ("512", "1K")
STEP_METHODS = ("sdpa", "deltaconv", "neighborhood", "ditfastattn", "linfusion", "mediator")
DITFASTATTN_STEP = "window_residual"  # DiTFastAttn is timed at its compressed step here
LAYER_MODEL, LAYER_RESOLUTION = "pixart", "1K"  # the layer parts' shape: PixArt-Σ at 1024² (64 x 64 tokens)
LAYER_WARMUP = 1  # the layer parts are cheap: one more untimed round after the peak-memory call (autograd's
# and the allocator's first-round growth otherwise lands in the first timed round)
TINY_LAYER_TOKENS = (8, 8)  # --e2e-tiny: the layer parts' token map
TINY_IMAGE_DIVISOR = 8  # --e2e-tiny: images this much smaller (512² -> 64², an 8 x 8 latent)
VAE_FACTOR = 8  # both models' VAEs: latents are image / 8
TEXT_TOKENS = {"pixart": 300, "sd15": 77}  # PixArtSigmaPipeline max_sequence_length; CLIP's model_max_length
E2E_DTYPES = {"cpu": "bf16", "cuda": "fp16"}
OUTPUT_NAME = "end_to_end.json"

# Denoiser configs of the public checkpoints (the architecture entries of their config.json):
# PixArt-alpha/PixArt-Sigma-XL-2-1024-MS transformer/ and runwayml/stable-diffusion-v1-5 unet/.
FULL_CONFIGS = {
    "pixart": dict(
        _class_name="PixArtTransformer2DModel", sample_size=128, in_channels=4, out_channels=8, num_layers=28,
        num_attention_heads=16, attention_head_dim=72, cross_attention_dim=1152, caption_channels=4096,
        patch_size=2, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        num_embeds_ada_norm=1000, attention_bias=True, activation_fn="gelu-approximate", interpolation_scale=2,
        use_additional_conditions=False, dropout=0.0, norm_num_groups=32, upcast_attention=False,
        attention_type="default"),
    "sd15": dict(
        _class_name="UNet2DConditionModel", sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=32, norm_eps=1e-5, act_fn="silu", center_input_sample=False, downsample_padding=1,
        mid_block_scale_factor=1, flip_sin_to_cos=True, freq_shift=0),
}
# The same classes and layouts, small: for testing the code path, not for measuring.
TINY_CONFIGS = {
    "pixart": {**FULL_CONFIGS["pixart"], "num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 8,
               "cross_attention_dim": 16, "caption_channels": 32, "sample_size": 16},
    "sd15": {**FULL_CONFIGS["sd15"], "block_out_channels": (8, 16, 16, 16), "layers_per_block": 1,
             "attention_head_dim": 2, "cross_attention_dim": 32, "norm_num_groups": 4, "sample_size": 32},
}


# ---- whole models ------------------------------------------------------------------------------------------
def build_model(model: str, device, dtype: torch.dtype, tiny: bool = False, seed: int = 0) -> nn.Module:
    """The denoiser of `model` from its config (full size, or the tiny one), seeded random weights, eval mode."""
    import diffusers

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
    modules in every site. Built by converting the model once per method and taking its new modules back out;
    the size hooks the conversions attach are shared (one per owner), so every variant sees the (H, W) map."""

    def __init__(self, model_name: str, model: nn.Module, methods, backend: str | None = None):
        from deltaconv_kernels.integrations.diffusers import convert, replace_attention
        from deltaconv_kernels.integrations.diffusers_models import find_sites

        self.model = model
        self.sites = find_sites(model)
        original = {s.name: s.block.attn1 for s in self.sites}
        processor = type(next(iter(original.values())).processor).__name__
        self.modules = {"sdpa": original}
        self.implementations = {"sdpa": f"diffusers {processor} (torch SDPA)"}
        self.ditfastattn_layers: list = []
        for method in methods:
            if method == "sdpa":
                continue
            if method == "deltaconv":
                convert(model, "released", backend=backend)
                from deltaconv_kernels.ops import resolve
                impl = resolve(backend, model.device.type, model.dtype)
            elif method == "ditfastattn":
                schedule = _ditfastattn_schedule()
                replace_attention(model, method, schedule=schedule)
                impl = f"torch, {DITFASTATTN_STEP} step"
            else:
                kw = {"kernel_size": flops.LAYER_SHAPES[model_name].kernel_size} if method == "neighborhood" else {}
                replace_attention(model, method, **kw)
                impl = "torch"
            self.modules[method] = {s.name: s.block.attn1 for s in self.sites}
            if method == "neighborhood":
                impl = next(iter(self.modules[method].values())).layer.impl
            if method == "ditfastattn":
                self.ditfastattn_layers = [m.layer for m in self.modules[method].values()]
            self.implementations[method] = impl
            self.install("sdpa")
        self.methods = [m for m in methods if m in self.modules]

    def install(self, method: str) -> None:
        for site in self.sites:
            site.block.attn1 = self.modules[method][site.name]

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
    from deltaconv_kernels.baselines import DiTFastAttnSchedule
    return DiTFastAttnSchedule(("full", DITFASTATTN_STEP))


# ---- measuring -------------------------------------------------------------------------------------------
def measure(calls: dict[str, Callable[[], object]], rounds: int, device, warmup: int = 0) -> dict[str, tuple]:
    """{name: (Timing, peak bytes, how measured)}. The peak-memory call of each callable, outside the rounds, is
    its first warm-up (a whole denoiser step on a CPU takes up to a minute: by default no call is spent twice);
    then `warmup` more untimed rounds and `rounds` interleaved timed rounds."""
    peaks = {name: peak_memory(call, device) for name, call in calls.items()}
    timings = interleaved(calls, rounds, warmup=warmup)
    return {name: (timings[name], *peaks[name]) for name in calls}


def _record(method, model, res, dtype_label, batch, impl, measured, mode, flops_ideal=0.0, **extra) -> Record:
    timing, peak, how = measured
    return Record(method=method, model=model, resolution=res.label, height=res.height, width=res.width,
                  dtype=dtype_label, batch=batch, implementation=impl, seconds_median=timing.median,
                  seconds_iqr=timing.iqr, rounds=timing.rounds, processes=1, peak_bytes=peak, flops_executed=0.0,
                  flops_ideal=flops_ideal, extrapolated=False, mode=mode,
                  extra={"seconds": list(timing.seconds), "peak_memory": how, **extra})


def step_records(model_name: str, resolutions, opts: dict, bar=None) -> list[Record]:
    """Denoiser-step records of one model at each resolution, its variants interleaved."""
    device, dtype = opts["device"], opts["dtype"]
    t0 = time.perf_counter()
    model = build_model(model_name, device, dtype, tiny=opts["tiny"])
    variants = AttentionVariants(model_name, model, opts["methods"])
    built_s = time.perf_counter() - t0
    sync = synchronizer(device)
    records = []
    for res in resolutions:
        if bar is not None:
            bar.set_postfix_str(f"step {model_name} {res.label}")
        if opts["tiny"]:  # tiny models get tiny images too
            res = bench.Resolution(f"{res.label} (tiny)", res.height // TINY_IMAGE_DIVISOR,
                                   res.width // TINY_IMAGE_DIVISOR)
        inputs = model_inputs(model_name, model, res.height, res.width, opts["batch"])
        variants.prime(inputs)
        calls = {m: variants.call(m, inputs, sync) for m in variants.methods}
        for method, measured in measure(calls, opts["rounds"], device).items():
            records.append(_record(method, model_name, res, opts["dtype_label"], opts["batch"],
                                   variants.implementations[method], measured, "denoiser step",
                                   tiny=opts["tiny"], model_build_s=built_s))
        if bar is not None:
            bar.update()
    del variants, model
    return records


def _layer_case(opts: dict):
    shape = flops.LAYER_SHAPES[LAYER_MODEL]
    res = bench.resolution(LAYER_RESOLUTION)
    h, w = TINY_LAYER_TOKENS if opts["tiny"] else shape.tokens(res.height, res.width)
    if opts["tiny"]:
        res = bench.Resolution("tiny", h * shape.pixels_per_token, w * shape.pixels_per_token)
    return shape, res, h, w


def layer_backward_records(opts: dict) -> list[Record]:
    """Forward+backward of one layer of every method at the PixArt-1024 layer shape, interleaved."""
    device, dtype, batch = opts["device"], opts["dtype"], opts["batch"]
    shape, res, h, w = _layer_case(opts)
    sync = synchronizer(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, h * w, shape.channels, generator=g).to(device, dtype).requires_grad_(True)
    grad = torch.randn(batch, h * w, shape.channels, generator=g).to(device, dtype)
    calls, impls = {}, {}
    for method in bench.METHODS:
        torch.manual_seed(0)
        mode = DITFASTATTN_STEP if method == "ditfastattn" else "forward"
        layer, impls[method] = bench.build_layer(method, LAYER_MODEL, device, dtype, mode)
        kw = {}
        if method == "ditfastattn":  # its compressed step, as the layer grid times it
            layer.set_cache(residual=torch.randn(x.shape, generator=g).to(device, dtype) * 0.1)
            kw = {"step": 1}
        calls[method] = _backward_call(layer, x, grad, (h, w), kw, sync)
    return [_record(m, LAYER_MODEL, res, opts["dtype_label"], batch, impls[m], measured, "forward+backward",
                    tokens=[h, w], channels=shape.channels)
            for m, measured in measure(calls, opts["rounds"], device, warmup=LAYER_WARMUP).items()]


def _backward_call(layer, x, grad, size, kw, sync):
    def call():
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x, size=size, **kw).backward(grad)
        sync()
    return call


def compile_records(opts: dict) -> list[Record]:
    """ΔConvBlock (pure-PyTorch backend) and SDPA, eager and compiled, plus ΔConvBlock on the automatic backend:
    forwards at the PixArt-1024 layer shape, interleaved; compile time reported apart."""
    from deltaconv_kernels import baselines
    from deltaconv_kernels.modules import DeltaConvBlock
    from deltaconv_kernels.ops import resolve

    device, dtype, batch = opts["device"], opts["dtype"], opts["batch"]
    shape, res, h, w = _layer_case(opts)
    factory = {"device": device, "dtype": dtype}
    torch.manual_seed(0)
    # sigmoid gate: the released PixArt models' (as bench.build_layer builds the PixArt ΔConvBlock)
    eager_block = DeltaConvBlock(shape.channels, kernel_size=shape.kernel_size, gate="sigmoid", backend="torch",
                                 **factory).eval()
    auto_block = DeltaConvBlock(shape.channels, kernel_size=shape.kernel_size, gate="sigmoid", backend=None,
                                **factory).eval()
    auto_block.load_state_dict(eager_block.state_dict())
    sdpa = baselines.SDPASelfAttention(shape.channels, shape.heads, **factory).eval()
    backend = opts["compile_backend"]
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
    for name, measured in measure(calls, opts["rounds"], device, warmup=LAYER_WARMUP).items():
        method, impl, _, _ = layers[name]
        ideal = flops.method_flops(method, shape, res.height, res.width, batch).total if not opts["tiny"] else 0.0
        extra = {"compile_s": compile_s[name]} if name in compile_s else {}
        records.append(_record(method, LAYER_MODEL, res, opts["dtype_label"], batch, impl, measured, "forward",
                               flops_ideal=ideal, tokens=[h, w], channels=shape.channels, **extra))
    return records


def _forward_call(module, x, size, sync):
    def call():
        with torch.inference_mode():
            module(x, size=size)
        sync()
    return call


# ---- output ------------------------------------------------------------------------------------------------
def format_markdown(records: list[Record]) -> str:
    """One markdown table per (mode, model): median and IQR in ms, rounds, peak memory and the speedup over the
    first SDPA row of the same resolution (the original attention; eager SDPA for the compile part)."""
    out = []
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
            out.append(f"| {r.resolution} | {r.method} | {r.implementation}{compile_note} | "
                       f"{r.seconds_median * 1e3:.1f} | {r.seconds_iqr * 1e3:.1f} | {r.rounds} | {peak} | {speedup} |")
        out.append("")
    return "\n".join(out)


def case_key(r: Record) -> tuple:
    """What makes two records the same case: a rerun of it replaces the older record."""
    return (r.mode, r.model, r.resolution, r.dtype, r.batch, r.method, r.implementation)


def merge_records(old: list[Record], new: list[Record]) -> list[Record]:
    """`old` with each case that `new` measured again replaced in place, then `new`'s other cases."""
    fresh = {case_key(r): r for r in new}
    merged = [fresh.pop(case_key(r), r) for r in old]
    return merged + list(fresh.values())


def read_json(path) -> tuple[dict, list[Record]]:
    data = json.loads(Path(path).read_text())
    return data["environment"], [Record(**d) for d in data["records"]]


def write_json(records: list[Record], path, environment: dict) -> None:
    text = json.dumps({"environment": environment, "records": [asdict(r) for r in records]}, indent=2)
    atomic_write(path, lambda f: f.write(text.encode()))


# ---- CLI ---------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The end-to-end options; `run` also reads the bench options --device, --dtype, --batch and --out."""
    parser.add_argument("--e2e-models", default=",".join(MODELS), help=f"comma-separated subset of {MODELS}")
    parser.add_argument("--e2e-resolutions", default=",".join(DEFAULT_RESOLUTIONS),
                        help=f"comma-separated image sizes for the denoiser steps, of "
                             f"{[r.label for r in bench.RESOLUTIONS]}")
    parser.add_argument("--e2e-methods", default=",".join(STEP_METHODS),
                        help=f"comma-separated subset of {STEP_METHODS} for the denoiser steps (sdpa = the original "
                             "attention; the layer parts always run every method)")
    parser.add_argument("--e2e-rounds", type=int, default=5, help="interleaved timed rounds per variant")
    parser.add_argument("--e2e-parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    parser.add_argument("--e2e-compile-backend", default="inductor",
                        help="torch.compile backend of the compile part (default inductor)")
    parser.add_argument("--e2e-merge", action="store_true",
                        help=f"merge into the {OUTPUT_NAME} already in --out: the cases measured again replace "
                             "their records, the others are kept (their runs listed under environment.earlier_runs)")
    parser.add_argument("--e2e-tiny", action="store_true",
                        help="small configs of the same model classes: checks the code path, measures nothing real")


def _options(args: argparse.Namespace) -> dict:
    from deltaconv_kernels.cli import check_at_least, check_device, check_output_dir

    models = bench._split(args.e2e_models, MODELS, "e2e-models")
    parts = bench._split(args.e2e_parts, PARTS, "e2e-parts")
    methods = bench._split(args.e2e_methods, STEP_METHODS, "e2e-methods")
    labels = [r.label for r in bench.RESOLUTIONS]
    resolutions = [bench.resolution(lab) for lab in bench._split(args.e2e_resolutions, labels, "e2e-resolutions")]
    if isinstance(args.e2e_rounds, bool) or not isinstance(args.e2e_rounds, int):
        raise ValueError(f"--e2e-rounds must be an int, got {args.e2e_rounds!r}")
    check_at_least(args.e2e_rounds, 1, "--e2e-rounds")
    device = check_device(args.device)
    check_at_least(args.batch, 1, "--batch")
    dtype_label = args.dtype or E2E_DTYPES[device.type]
    if dtype_label not in bench.DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(bench.DTYPES)}, got {dtype_label!r}")
    if not isinstance(args.e2e_compile_backend, str) or not args.e2e_compile_backend:
        raise ValueError(f"--e2e-compile-backend must name a torch.compile backend, got {args.e2e_compile_backend!r}")
    if "compile" in parts and args.e2e_compile_backend not in torch._dynamo.list_backends(exclude_tags=()):
        raise ValueError(f"--e2e-compile-backend must be one of {torch._dynamo.list_backends(exclude_tags=())}, "
                         f"got {args.e2e_compile_backend!r}")
    return {"models": models, "parts": parts, "methods": [m for m in STEP_METHODS if m in methods],
            "resolutions": resolutions, "rounds": args.e2e_rounds,
            "device": device, "dtype": bench.DTYPES[dtype_label], "dtype_label": dtype_label,
            "batch": args.batch or 2, "out": check_output_dir(args.out, "--out"),
            "compile_backend": args.e2e_compile_backend, "tiny": bool(args.e2e_tiny), "merge": bool(args.e2e_merge)}


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    opts = _options(args)
    previous = opts["out"] / OUTPUT_NAME
    if opts["merge"] and not previous.is_file():
        raise ValueError(f"--e2e-merge needs an earlier {OUTPUT_NAME} in --out, and {previous} does not exist")
    earlier = read_json(previous) if opts["merge"] else None  # read first: a bad file fails before any timing
    total = (len(opts["models"]) * len(opts["resolutions"]) if "step" in opts["parts"] else 0) + \
        sum(p in opts["parts"] for p in ("layer-backward", "compile"))
    t0 = time.perf_counter()
    records: list[Record] = []
    with tqdm(total=total, unit="case") as bar:
        if "step" in opts["parts"]:
            for model in opts["models"]:
                records += step_records(model, opts["resolutions"], opts, bar)
        for part, fn in (("layer-backward", layer_backward_records), ("compile", compile_records)):
            if part in opts["parts"]:
                bar.set_postfix_str(part)
                records += fn(opts)
                bar.update()
    cfg = bench.BenchConfig.for_device(opts["device"], opts["dtype"], opts["batch"])
    env = {k: v for k, v in bench.environment(cfg).items() if k not in ("max_call_s", "budget_s")}
    env.update(wall_s=time.perf_counter() - t0, tiny=opts["tiny"], rounds=opts["rounds"], parts=opts["parts"],
               models=opts["models"], methods=opts["methods"], resolutions=[r.label for r in opts["resolutions"]],
               compile_backend=opts["compile_backend"])
    print(format_markdown(records))
    if earlier is not None:
        old_env, old_records = earlier
        env["earlier_runs"] = old_env.pop("earlier_runs", []) + [old_env]
        records = merge_records(old_records, records)
    write_json(records, previous, env)
    print(f"wrote {previous} ({len(records)} records, {env['wall_s']:.0f} s)")
    return 0
