"""`deltaconv distill`: convert a diffusers denoiser's self-attention to ΔConvBlocks and distil them from the
original attention (paper §4.3). Runs on one CPU/GPU, or on many GPUs under `accelerate launch`."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from deltaconv_kernels.cli.args import check_at_least, check_output_dir

EPILOG = """\
examples:
  # smoke run on random latents (no data needed)
  deltaconv distill --model ./pixart --random 64 --random-size 64 64 --max-steps 20 --output-dir runs/smoke
  # precomputed latents/prompt embeddings (the released recipe's loss)
  deltaconv distill --model ./sd15 --latents data.pt --feature-target hidden_states \\
      --feature-weight 0.001 --noise-weight 1 --mixed-precision bf16 --output-dir runs/sd15
  # images + .txt captions, several GPUs
  accelerate launch -m deltaconv_kernels.cli distill --model ./sd15 --images ./photos \\
      --text-encoder mypkg.encoders:encode_sd15 --resolution 512 --output-dir runs/sd15
  # an attention baseline as the student instead (its projections carried over from the attention)
  deltaconv distill --model ./pixart --latents data.pt --student linfusion --output-dir runs/linfusion
  # continue after a crash (same settings; --max-steps may grow)
  deltaconv distill ... --output-dir runs/sd15 --resume

outputs in --output-dir: checkpoint.pt (every --checkpoint-every steps, atomic), history.csv/.json,
loss.png, and deltaconv/ (the final ΔConvBlock weights; restore them with
deltaconv_kernels.integrations.diffusers.load(model, "runs/x/deltaconv"))."""


STUDENTS = ("deltaconv", "linfusion", "neighborhood", "mediator")
INIT_METHODS = ("random", "attention", "attention+fit")  # distill.initialise.INITS (not imported: --help stays fast)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    m = parser.add_argument_group("model")
    m.add_argument("--model", required=True, help="local diffusers folder of the denoiser (config.json + weights) "
                   "or of a whole pipeline (its unet/ or transformer/ is used)")
    m.add_argument("--subfolder", default=None, help="denoiser subfolder inside --model (default: auto)")
    m.add_argument("--scheduler", default=None, help="folder with scheduler_config.json for the noise schedule "
                   "and prediction type (default: --model's scheduler/ if present, else DDPM defaults)")
    m.add_argument("--student", choices=STUDENTS, default="deltaconv",
                   help="what replaces every attn1 and is trained: ΔConvBlocks (default), or an attention baseline "
                   "whose q/k/v/out projections are carried over from the attention and whose every parameter "
                   "trains (neighborhood: window = --kernel-sizes, one odd int); baseline weights are written to "
                   "<output-dir>/student.safetensors")
    m.add_argument("--kernel-sizes", default="released", help="'released' (the paper's per-level sizes), one odd "
                   "int for every layer, or a JSON file {layer_name: K}")
    m.add_argument("--gate", choices=("scaled", "sigmoid"), default=None,
                   help="ΔConvBlock gate (default: the released one for the architecture)")
    m.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5], help="pyramid scales (default 1.0 0.5)")
    m.add_argument("--inter-ratio", type=float, default=0.5, help="inner width / model width (default 0.5)")
    m.add_argument("--backend", default=None, help="force a ΔConvBlock backend (triton, cuda, cpu, torch)")
    m.add_argument("--init", default="random", metavar="random|attention|attention+fit|FOLDER",
                   help="how the ΔConvBlocks start: random (kaiming, as released; default), attention (closed "
                   "form from the attention's statistics on --init-samples training samples, docs/DESIGN.md §10), "
                   "attention+fit (that plus a least-squares fit of proj_out/pool_proj to the attention's outputs, "
                   "layer by layer: step 0), or a deltaconv/ folder of saved ΔConvBlock weights")
    m.add_argument("--init-samples", type=int, default=32,
                   help="training samples (each at its own timestep) the attention init calibrates on (default 32)")

    d = parser.add_argument_group("data (choose one)")
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--latents", help="a .pt/.safetensors file with latents [N,C,H,W] (already scaled), "
                     "prompt_embeds [N,L,D], optionally text_embeds/time_ids (SDXL)")
    src.add_argument("--images", help="a folder of images, each with a same-name .txt caption; encoded once "
                     "with --vae and --text-encoder (cached as <output-dir>/latents.pt)")
    src.add_argument("--random", type=int, metavar="N", help="N random latents/prompts (smoke runs)")
    d.add_argument("--vae", default=None, help="AutoencoderKL folder for --images (default: --model's vae/)")
    d.add_argument("--text-encoder", default=None, metavar="MODULE:FUNCTION",
                   help="for --images: an importable function list[str] -> prompt_embeds [B,L,D] (or a dict "
                   "with prompt_embeds and text_embeds)")
    d.add_argument("--resolution", type=int, default=512, help="--images: bucket area is resolution^2 pixels")
    d.add_argument("--bucket-multiple", type=int, default=64, help="--images: bucket sides are multiples of this")
    d.add_argument("--max-aspect", type=float, default=2.0, help="--images: largest bucket aspect ratio")
    d.add_argument("--random-size", type=int, nargs="+", default=[32, 32], metavar="H W",
                   help="--random: latent sizes as H W pairs (several pairs exercise the buckets)")
    d.add_argument("--random-prompt-len", type=int, default=8, help="--random: prompt tokens")

    t = parser.add_argument_group("training")
    t.add_argument("--output-dir", required=True, help="where checkpoints, logs, plot and weights go")
    t.add_argument("--max-steps", type=int, default=1000, help="optimizer steps in total (default 1000)")
    t.add_argument("--batch-size", type=int, default=4, help="samples per step per process (default 4)")
    t.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (default 3e-4, the paper's)")
    t.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    t.add_argument("--warmup-steps", type=int, default=100, help="linear LR warm-up steps (default 100)")
    t.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm; 0 = off")
    t.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no",
                   help="autocast dtype; frozen weights are stored in it, ΔConvBlocks train in fp32")
    t.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    t.add_argument("--checkpoint-every", type=int, default=100, help="write checkpoint.pt every N steps; a crash "
                   "loses at most N steps")
    t.add_argument("--log-every", type=int, default=10, help="log losses to CSV/JSON every N steps")
    t.add_argument("--seed", type=int, default=0, help="seed of everything random: the ΔConvBlocks' init, batch "
                   "order, noise and timesteps (two identical commands give bit-identical runs)")
    t.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                   help="continue from CHECKPOINT (default: <output-dir>/checkpoint.pt) exactly where it stopped")
    t.add_argument("--trust-checkpoint", action="store_true", help="let --resume read an old-format (pickled) "
                   "checkpoint: this RUNS CODE FROM THE FILE, so only for checkpoints you wrote yourself")
    t.add_argument("--overwrite", action="store_true", help="start afresh in an --output-dir that holds an "
                   "earlier run (its checkpoint, logs and weights are deleted); without it such a folder is refused")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    t.add_argument("--no-plot", action="store_true", help="skip loss.png")

    lo = parser.add_argument_group("loss (total = output*L_out + feature*L_feat + noise*L_noise)")
    lo.add_argument("--output-weight", type=float, default=1.0, help="weight of student-vs-teacher output MSE")
    lo.add_argument("--feature-weight", type=float, default=1.0, help="λ, weight of the per-layer feature MSE")
    lo.add_argument("--feature-target", choices=("attn1", "hidden_states"), default="attn1",
                    help="attn1: ΔConvBlock vs original attention output on the same input; hidden_states: "
                    "post-residual block outputs of student vs teacher pass (released training, with λ=0.001)")
    lo.add_argument("--noise-weight", type=float, default=0.0, help="weight of MSE to the true target (noise/v)")
    lo.add_argument("--snr-gamma", type=float, default=5.0, help="Min-SNR γ for per-sample weights; 0 = off")


def _kernel_sizes(value: str):
    if value == "released":
        return value
    if value.lstrip("-").isdigit():
        return int(value)
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"--kernel-sizes must be 'released', an int or a JSON file, got {value!r}")
    return json.loads(path.read_text())


def _import_callable(spec: str):
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"--text-encoder must look like MODULE:FUNCTION, got {spec!r}")
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise ValueError(f"--text-encoder {spec}: {name} is not a callable in {module}")
    return fn


def _prompt_dim(model) -> int:
    cfg = model.config
    return cfg.get("caption_channels") or cfg.get("cross_attention_dim")


def check_args(args) -> None:
    """The options that need no model, checked before anything is loaded or written."""
    from deltaconv_kernels.distill.trainer import check_output_dir_free

    check_at_least(args.threads, 1, "--threads")
    if args.student != "deltaconv":
        given = [o for o, v in (("--gate", args.gate), ("--backend", args.backend),
                                ("--init", args.init != "random")) if v]
        if given:
            raise ValueError(f"{', '.join(given)} set ΔConvBlocks up; --student {args.student} trains a baseline")
        if args.student == "neighborhood" and not args.kernel_sizes.isdigit():
            raise ValueError("--student neighborhood needs --kernel-sizes K, one odd int (its window)")
    check_at_least(args.init_samples, 1, "--init-samples")
    if args.init not in INIT_METHODS and not Path(args.init).is_dir():
        raise ValueError(f"--init must be one of {', '.join(INIT_METHODS)} or a folder of saved ΔConvBlock "
                         f"weights, got {args.init!r} (no such folder)")
    check_at_least(args.random, 1, "--random")
    if args.random is not None:
        if len(args.random_size) % 2:
            raise ValueError(f"--random-size takes H W pairs, got {args.random_size}")
        if min(args.random_size) < 1:
            raise ValueError(f"--random-size sides must be >= 1, got {args.random_size}")
    check_at_least(args.random_prompt_len, 1, "--random-prompt-len")
    if args.resume is not None and args.overwrite:
        raise ValueError("--resume and --overwrite contradict each other: continue the run or start afresh")
    check_output_dir(args.output_dir, "--output-dir")
    if args.resume is None:
        check_output_dir_free(args.output_dir, args.overwrite)
    if args.images and not (Path(args.output_dir) / "latents.pt").is_file():  # not yet encoded and cached
        if not args.text_encoder:
            raise ValueError("--images needs --text-encoder MODULE:FUNCTION (captions -> prompt embeddings)")
        vae = Path(args.vae) if args.vae else Path(args.model) / "vae"
        if not (vae / "config.json").is_file():
            raise ValueError(f"--images needs a VAE to encode them: no config.json in {vae} "
                             f"({'--vae' if args.vae else 'pass --vae, or give a --model pipeline with a vae/'})")


def check_device_settings(args, device) -> None:
    """--mixed-precision and --backend against the device the run will use."""
    from deltaconv_kernels.ops.registry import resolve

    if args.mixed_precision == "fp16" and device.type != "cuda":
        raise ValueError(f"--mixed-precision fp16 needs a CUDA GPU (the run is on {device.type}); use bf16 or no")
    if args.backend is not None:
        resolve(args.backend, device.type)  # unknown or unavailable here: an error naming every backend's reason


def check_data(dataset, model) -> None:
    """The data fits the denoiser: latent channels and prompt-embedding width."""
    channels, width = dataset.latents[0].shape[0], dataset.prompt_embeds[0].shape[-1]
    if channels != model.config.in_channels:
        raise ValueError(f"the latents have {channels} channels but {type(model).__name__} takes "
                         f"in_channels={model.config.in_channels}")
    if width != _prompt_dim(model):
        raise ValueError(f"the prompt embeddings are {width} wide but {type(model).__name__} takes "
                         f"{_prompt_dim(model)} (caption_channels / cross_attention_dim)")


def _dataset(args, model, accelerator):
    from deltaconv_kernels.distill import data

    if args.latents:
        return data.load_latents_file(args.latents)
    if args.random is not None:
        sizes = args.random_size
        pairs = [(sizes[i], sizes[i + 1]) for i in range(0, len(sizes), 2)]
        added = {}
        if model.config.get("addition_embed_type") == "text_time":  # SDXL-style U-Net
            time_dim = model.config.projection_class_embeddings_input_dim
            pooled = time_dim - 6 * model.config.addition_time_embed_dim
            added = {"text_embeds": pooled, "time_ids": 6}
        return data.random_dataset(args.random, model.config.in_channels, pairs, args.random_prompt_len,
                                   _prompt_dim(model), seed=args.seed, added_dims=added)
    cache = Path(args.output_dir) / "latents.pt"
    if cache.is_file():
        return data.load_latents_file(cache)
    from diffusers import AutoencoderKL

    vae_path, sub = (args.vae, None) if args.vae else (args.model, "vae")
    vae = AutoencoderKL.from_pretrained(vae_path, subfolder=sub).to(accelerator.device).eval()
    dataset = data.encode_image_folder(args.images, vae, _import_callable(args.text_encoder), args.resolution,
                                       args.bucket_multiple, args.max_aspect, device=accelerator.device,
                                       seed=args.seed)
    if accelerator.is_main_process:
        dataset.save(cache)
    return dataset


def build(args):
    """(trainer, resume path) from parsed arguments; separated from `run` for tests."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from deltaconv_kernels.distill.losses import LossWeights
    from deltaconv_kernels.distill.models import load_denoiser, load_noise_scheduler
    from deltaconv_kernels.distill.trainer import DistillConfig, DistillTrainer
    from deltaconv_kernels.integrations.diffusers import convert, load, replace_attention

    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = DistillConfig(
        output_dir=args.output_dir, max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        max_grad_norm=args.max_grad_norm or None, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing, checkpoint_every=args.checkpoint_every,
        log_every=args.log_every, seed=args.seed, progress=not args.no_progress, plot=not args.no_plot,
        loss=LossWeights(output=args.output_weight, feature=args.feature_weight, noise=args.noise_weight,
                         gamma=args.snr_gamma or None, feature_target=args.feature_target))
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    check_device_settings(args, accelerator.device)
    set_seed(args.seed)  # python, numpy, torch (and CUDA) RNGs: the fresh ΔConvBlocks' init is seeded too
    model = load_denoiser(args.model, args.subfolder)
    scheduler_path = args.scheduler
    if scheduler_path is None and (Path(args.model) / "scheduler" / "scheduler_config.json").is_file():
        scheduler_path = args.model
    scheduler = load_noise_scheduler(scheduler_path)
    dataset = _dataset(args, model, accelerator)
    check_data(dataset, model)
    if args.student == "deltaconv":
        init, calibration = (args.init, None) if args.init in INIT_METHODS else ("random", None)
        if init != "random":
            from deltaconv_kernels.distill.initialise import dataset_calibration
            calibration = dataset_calibration(dataset, scheduler, args.init_samples, args.batch_size, args.seed)
        report = convert(model, _kernel_sizes(args.kernel_sizes), gate=args.gate, scales=tuple(args.scales),
                         inter_ratio=args.inter_ratio, keep_attention=True, backend=args.backend, init=init,
                         calibration=calibration)
    else:
        extra = {"kernel_size": int(args.kernel_sizes)} if args.student == "neighborhood" else {}
        names = replace_attention(model, args.student, keep_attention=True, **extra)
        report = f"{type(model).__name__}: {len(names)} self-attention layers -> {args.student} students"
    if accelerator.is_main_process:
        print(report)
    if args.init not in INIT_METHODS:
        load(model, args.init)
    resume = None
    if args.resume is not None:
        resume = args.resume or str(Path(args.output_dir) / "checkpoint.pt")
    return DistillTrainer(model, scheduler, dataset, config, accelerator=accelerator), resume


def run(args: argparse.Namespace) -> int:
    """Errors (ValueError, OSError, ...) reach `deltaconv_kernels.cli.main`, which prints `error: ...`, exit 2."""
    trainer, resume = build(args)
    summary = trainer.train(resume=resume, overwrite=args.overwrite, trust_checkpoint=args.trust_checkpoint)
    if trainer.accelerator.is_main_process:
        print(json.dumps(summary, indent=1))
    return 0
