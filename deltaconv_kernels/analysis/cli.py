"""`deltaconv analyze`: attention-locality analysis of a diffusers denoiser and kernel sizes for `convert`, plus
the statistics of the attention-informed init (attention_statistics.safetensors next to analysis.json).

Examples:
  deltaconv analyze --tiny pixart --out runs/analysis
  deltaconv analyze --model /models/sd15 --subfolder unet --resolution 512 --timesteps 999,500,100 --out sd15
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from deltaconv_kernels.cli.args import check_at_least, check_device, check_output_dir, parse_dtype

MODEL_CLASSES = {"unet": "UNet2DConditionModel", "pixart": "PixArtTransformer2DModel", "dit": "DiTTransformer2DModel"}


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one int")
    return values


def _fractions(text: str) -> list[tuple[float, float]]:
    try:
        pairs = [tuple(float(v) for v in p.split(",")) for p in text.split(";") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'fy,fx;fy,fx', got {text!r}") from None
    if any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected 'fy,fx;fy,fx' pairs, got {text!r}")
    return pairs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="local diffusers model folder (from_pretrained; no downloads)")
    src.add_argument("--tiny", choices=("unet", "pixart", "dit"), help="built-in tiny random model (demo/tests)")
    parser.add_argument("--subfolder", default=None,
                        help="subfolder of --model holding the denoiser (unet, transformer)")
    parser.add_argument("--model-class", choices=("auto", *MODEL_CLASSES), default="auto",
                        help="denoiser class; auto reads _class_name from config.json")
    parser.add_argument("--out", default="deltaconv_analysis", help="output folder for analysis.json and PNGs")
    parser.add_argument("--timesteps", type=_int_list, default=[999, 750, 500, 250, 1],
                        help="comma-separated timesteps (default 999,750,500,250,1)")
    parser.add_argument("--resolution", default=None,
                        help="image size in pixels, 512 or HxW like 512x768 (default: the model's sample_size)")
    parser.add_argument("--vae-scale-factor", type=int, default=None,
                        help="pixels per latent cell (default: the pipeline folder's VAE, else 8)")
    parser.add_argument("--batch-size", type=int, default=1, help="random inputs per timestep (default 1)")
    parser.add_argument("--inputs", default=None,
                        help="torch.save'd dict of inputs instead of random ones: latents [B,C,H,W] (or a dict "
                             "{timestep: latents}, each timestep its own x_t) plus encoder_hidden_states (U-Net, "
                             "PixArt; SDXL also text_embeds, time_ids) or class_labels (DiT)")
    parser.add_argument("--num-queries", type=int, default=64, help="query positions sampled per layer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.8, help="ERF = smallest k with M(k) >= this")
    parser.add_argument("--hp-cutoff", type=float, default=0.1, help="Butterworth cutoff, cycles per pixel")
    parser.add_argument("--hp-order", type=int, default=2, help="Butterworth order")
    parser.add_argument("--hp-power", type=int, choices=(1, 2), default=1,
                        help="M_hp uses |A_hp|^p: 1 = magnitude share, 2 = energy share")
    parser.add_argument("--max-kernel", type=int, default=None, help="largest k measured (default: whole map)")
    parser.add_argument("--erf-source", choices=("mass", "highpass"), default="mass",
                        help="which ERF the kernel-size rule uses")
    parser.add_argument("--k-fraction", type=float, default=0.6, help="K = nearest odd to fraction * ERF")
    parser.add_argument("--k-min", type=int, default=3)
    parser.add_argument("--k-max", type=int, default=31)
    parser.add_argument("--plot-queries", type=_fractions, default=None,
                        help="queries to plot as map fractions 'fy,fx;fy,fx' (default '0.5,0.5;0.25,0.25;0,0')")
    parser.add_argument("--max-elements", type=int, default=None, help="attention scores held at once per chunk")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", help="fp32|fp16|bf16 (or float32|float16|bfloat16)")
    parser.add_argument("--no-plots", action="store_true", help="write the JSON only")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def load_model(args: argparse.Namespace):
    """The denoiser named by --tiny or --model (+ --subfolder, --model-class), on --device in --dtype."""
    if args.tiny:
        from deltaconv_kernels.analysis.tiny import tiny_model
        model = tiny_model(args.tiny, args.seed)
    else:
        # deferred: diffusers and the integration (which needs safetensors) are optional; --help works without them
        import diffusers

        from deltaconv_kernels.integrations.diffusers.sites import dtype_kwarg, find_denoiser
        if args.model_class != "auto":
            sub, class_name = args.subfolder, MODEL_CLASSES[args.model_class]
            if not (Path(args.model) / (sub or "") / "config.json").is_file():
                raise FileNotFoundError(f"--model/--subfolder: no config.json in {Path(args.model) / (sub or '')}")
        else:
            sub, class_name = find_denoiser(args.model, args.subfolder)  # a pipeline folder: its unet/transformer
        model = getattr(diffusers, class_name).from_pretrained(args.model, subfolder=sub,
                                                               **dtype_kwarg(parse_dtype(args.dtype)))
    if args.tiny and parse_dtype(args.dtype) != torch.float32:
        model = model.to(parse_dtype(args.dtype))  # from_pretrained already loaded the others in dtype
    return model.to(args.device).eval()


def vae_scale_factor(args: argparse.Namespace) -> int:
    """--vae-scale-factor, else the VAE's of a --model pipeline folder, else 8 (SD, SDXL, PixArt)."""
    if args.vae_scale_factor is not None:
        return args.vae_scale_factor
    from deltaconv_kernels.integrations.diffusers.sites import pipeline_vae_scale_factor  # deferred: as in load_model
    found = pipeline_vae_scale_factor(args.model) if args.model else None
    return found if found is not None else 8


def build_settings(args: argparse.Namespace):
    from deltaconv_kernels.analysis.capture import DEFAULT_MAX_ELEMENTS
    from deltaconv_kernels.analysis.pipeline import DEFAULT_PLOT_QUERIES, AnalysisSettings
    from deltaconv_kernels.analysis.recommend import KernelRule
    return AnalysisSettings(
        timesteps=tuple(args.timesteps), num_queries=args.num_queries, seed=args.seed, threshold=args.threshold,
        hp_cutoff=args.hp_cutoff, hp_order=args.hp_order, hp_power=args.hp_power, max_kernel=args.max_kernel,
        erf_source=args.erf_source, rule=KernelRule(args.k_fraction, args.k_min, args.k_max),
        plot_queries=tuple(args.plot_queries or DEFAULT_PLOT_QUERIES),
        max_elements=args.max_elements or DEFAULT_MAX_ELEMENTS)


TRAIN_TIMESTEPS = 1000  # the DDPM training schedule of every supported model family (t in 0..999)


def check_args(args: argparse.Namespace) -> None:
    """Every option checked before a model is loaded (errors name the option; `deltaconv` prints them)."""
    check_device(args.device)
    parse_dtype(args.dtype)
    for option in ("batch_size", "num_queries", "vae_scale_factor", "hp_order"):
        check_at_least(getattr(args, option), 1, "--" + option.replace("_", "-"))
    check_at_least(args.max_kernel, 1, "--max-kernel")
    check_at_least(args.max_elements, 1, "--max-elements")
    bad = [t for t in args.timesteps if not 0 <= t < TRAIN_TIMESTEPS]
    if bad:
        raise ValueError(f"--timesteps must lie in [0, {TRAIN_TIMESTEPS - 1}] (the models' training timesteps), "
                         f"got {bad}")
    if args.inputs and not Path(args.inputs).is_file():
        raise FileNotFoundError(f"--inputs {args.inputs} does not exist")
    check_output_dir(args.out, "--out")
    build_settings(args)  # threshold, cut-off, k-min/k-max rule


def _read_inputs(path: str) -> dict:
    try:
        inputs = torch.load(path, weights_only=True)
    except Exception as e:  # not a torch file, truncated, or pickled objects beyond tensors
        raise ValueError(f"--inputs {path} could not be read as a torch file ({type(e).__name__}: {e})") from e
    if not isinstance(inputs, dict) or "latents" not in inputs:
        raise ValueError(f"--inputs {path} must hold a dict with at least 'latents' [B, C, H, W]")
    return inputs


def run(args: argparse.Namespace) -> int:
    from deltaconv_kernels.analysis import pipeline, plots

    check_args(args)
    settings = build_settings(args)
    inputs, latent_hw = None, None
    if args.inputs:
        inputs = _read_inputs(args.inputs)
    elif args.resolution:
        latent_hw = pipeline.latent_size_from_resolution(args.resolution, vae_scale_factor(args))
    from deltaconv_kernels.analysis.attention_stats import STATS_NAME, AttentionStatistics, save_statistics

    model = load_model(args)
    statistics = AttentionStatistics()
    report = pipeline.analyze(model, settings, latent_hw, args.batch_size, inputs, progress=not args.no_progress,
                              statistics=statistics)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = [report.write_json(out / "analysis.json")]
    # The attention-informed init's statistics (convert(..., init="attention", calibration=<this folder>))
    written.append(save_statistics(statistics.results(), out / STATS_NAME,
                                   {"model": report.model, "timesteps": list(settings.timesteps),
                                    "num_queries": settings.num_queries, "seed": settings.seed,
                                    "inputs": "given" if inputs is not None else "random"}))
    if not args.no_plots:
        written += plots.write_plots(report, out)
    print(f"{report.model}: {len(report.layers)} self-attention layers, latent {report.latent_hw[0]}x"
          f"{report.latent_hw[1]}, timesteps {list(settings.timesteps)}")
    width = max(len(n) for n in report.layers)
    print(f"  {'layer'.ljust(width)}  {'HxW':>7}  {'ERF':>4}  {'ERF_hp':>6}  {'K':>3}")
    for name, r in report.layers.items():
        hw = f"{r.stats.hw[0]}x{r.stats.hw[1]}"
        print(f"  {name.ljust(width)}  {hw:>7}  {r.erf or '-':>4}  {r.hp_erf or '-':>6}  {r.kernel_size:>3}")
    print("kernel_sizes for convert(model, kernel_sizes=...):", json.dumps(report.kernel_sizes))
    for path in written:
        print("wrote", path)
    return 0
