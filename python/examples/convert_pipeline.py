"""Convert a diffusers pipeline's self-attention to ΔConvBlocks and generate.

With --model PATH it loads a local diffusers pipeline directory (from_pretrained, no download) and encodes
--prompt with the pipeline's own text encoder. Without it, it builds a tiny random SD-like or PixArt-like
pipeline from configs (random prompt embeddings), which shows the API and runs anywhere in seconds.

    python python/examples/convert_pipeline.py --tiny sd15 --height 64 --width 48
    python python/examples/convert_pipeline.py --model /models/stable-diffusion-v1-5 --prompt "a red fox" \
        --deltaconv-weights ./my_distilled_blocks --out fox.png

Diffusers pipelines import `transformers`, so it must be installed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from deltaconv_kernels.integrations import diffusers as dd
from deltaconv_kernels.integrations.diffusers.sites import dtype_kwarg


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", type=Path, help="local diffusers pipeline directory (from_pretrained)")
    p.add_argument("--tiny", choices=("sd15", "sdxl", "pixart"), default="sd15",
                   help="tiny random pipeline to build when --model is not given (default: sd15)")
    p.add_argument("--prompt", default="a photo of a cat", help="prompt (with --model)")
    p.add_argument("--kernel-size", default="released",
                   help="'released' (per-level defaults of the released models) or one odd int for all layers")
    p.add_argument("--gate", choices=("scaled", "sigmoid"), help="gate (default: the released one)")
    p.add_argument("--deltaconv-weights", type=Path,
                   help="directory saved by deltaconv_kernels...diffusers.save, or a released ΔConvFusion "
                        "checkpoint file/directory (with --released)")
    p.add_argument("--released", action="store_true", help="--deltaconv-weights is a released ΔConvFusion ckpt")
    p.add_argument("--steps", type=int, default=2, help="inference steps (default 2)")
    p.add_argument("--height", type=int, default=64, help="image height in pixels")
    p.add_argument("--width", type=int, default=48, help="image width in pixels")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the first image here (PNG)")
    return p.parse_args(argv)


def _tiny_pipeline(kind: str):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    import tiny_models  # test helpers: tiny configs, random weights
    if kind == "pixart":
        return tiny_models.tiny_pixart_pipeline("sigma"), {
            "prompt_embeds": torch.randn(1, 5, 32), "prompt_attention_mask": torch.ones(1, 5),
            "negative_prompt": None, "negative_prompt_embeds": torch.randn(1, 5, 32),
            "negative_prompt_attention_mask": torch.ones(1, 5), "use_resolution_binning": False}
    return tiny_models.tiny_sd_pipeline(kind), {"prompt_embeds": torch.randn(1, 5, 32),
                                                "negative_prompt_embeds": torch.randn(1, 5, 32)}


def main(argv=None) -> int:
    args = parse_args(argv)
    dtype = getattr(torch, args.dtype)
    if args.model is not None:
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained(args.model, **dtype_kwarg(dtype), local_files_only=True)
        inputs = {"prompt": args.prompt}
    else:
        torch.manual_seed(args.seed)
        pipe, inputs = _tiny_pipeline(args.tiny)
        pipe = pipe.to(dtype=dtype)
    if args.deltaconv_weights is not None and args.released:
        report = dd.import_released(pipe, args.deltaconv_weights, gate=args.gate)
    elif args.deltaconv_weights is not None:
        report = dd.load(pipe, args.deltaconv_weights)
    else:
        k = args.kernel_size if args.kernel_size == "released" else int(args.kernel_size)
        report = dd.convert(pipe, kernel_sizes=k, gate=args.gate)
    print(report)
    pipe = pipe.to(args.device)
    inputs = {k: v.to(args.device, dtype) if torch.is_tensor(v) and v.is_floating_point() else v
              for k, v in inputs.items()}
    start = time.perf_counter()
    images = pipe(**inputs, num_inference_steps=args.steps, height=args.height, width=args.width,
                  generator=torch.Generator(args.device).manual_seed(args.seed)).images
    print(f"generated {len(images)} image(s) of {images[0].size} in {time.perf_counter() - start:.2f} s "
          f"({args.steps} steps, {args.device}, {args.dtype})")
    if args.out is not None:
        images[0].save(args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
