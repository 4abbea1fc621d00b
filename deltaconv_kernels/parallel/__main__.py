"""`torchrun --standalone --nproc_per_node N -m deltaconv_kernels.parallel`: a self-contained check of band
parallelism on this machine (gloo on CPU, NCCL when every rank has a GPU). It builds a small PixArt pipeline with
random weights (no download), converts it with `convert`, makes one image on every rank alone, then
`patch_parallel`s it and makes the same image across the ranks; rank 0 prints the error against the one-process
image, the bytes each rank sent per step and both wall times. Exit status 1 if the images differ beyond the fp32
tolerance of deltaconv_kernels.testing."""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist


def _pipeline(width: int, layers: int, device):
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
    torch.manual_seed(0)  # the same random weights on every rank
    transformer = PixArtTransformer2DModel(
        sample_size=32, in_channels=4, out_channels=8, num_layers=layers, num_attention_heads=2,
        attention_head_dim=width // 2, cross_attention_dim=width, caption_channels=32, patch_size=2,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6, num_embeds_ada_norm=1000,
        attention_bias=True, activation_fn="gelu-approximate", use_additional_conditions=False)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4)
    pipe = PixArtSigmaPipeline(tokenizer=None, text_encoder=None, vae=vae.eval(), transformer=transformer.eval(),
                               scheduler=DPMSolverMultistepScheduler()).to(device)
    pipe.set_progress_bar_config(disable=True)
    # The pipeline refuses sizes that are not multiples of 8 pixels, its full-size VAE's factor; this VAE's is 2.
    pipe.check_inputs = lambda *a, **k: None
    return pipe


class _DenoiserClock:
    """Seconds spent in the denoiser's outermost calls (the band-parallel wrapper calls it again inside)."""

    def __init__(self, model):
        self.depth, self.start, self.total = 0, 0.0, 0.0
        model.register_forward_pre_hook(self._enter)
        model.register_forward_hook(self._leave)

    def _enter(self, *_):
        if self.depth == 0:
            self.start = time.perf_counter()
        self.depth += 1

    def _leave(self, *_):
        self.depth -= 1
        if self.depth == 0:
            self.total += time.perf_counter() - self.start


def _image(pipe, args, device):
    g = torch.Generator().manual_seed(args.seed)
    cond, uncond = torch.randn(2, 1, 5, 32, generator=g).to(device)
    mask = torch.ones(1, 5, device=device)
    start = time.perf_counter()
    image = pipe(prompt_embeds=cond, prompt_attention_mask=mask, negative_prompt_embeds=uncond,
                 negative_prompt_attention_mask=mask, height=args.height, width=args.width,
                 num_inference_steps=args.steps, use_resolution_binning=False, output_type="pt",
                 generator=torch.Generator().manual_seed(args.seed)).images
    return image, time.perf_counter() - start


def _fastest(pipe, args, device):
    runs = []
    for _ in range(max(1, args.repeat)):
        before = pipe.clock.total
        image, seconds = _image(pipe, args, device)
        runs.append((image, seconds, pipe.clock.total - before))
    fastest = min(runs, key=lambda r: r[1])
    return runs[-1][0], fastest[1:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deltaconv_kernels.parallel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=36, help="image height in pixels (latent = height/2, "
                        "token rows = height/4); default 36: an odd 9-row token map")
    parser.add_argument("--width", type=int, default=28, help="image width in pixels (default 28)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=16, help="transformer width (default 16)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's default)")
    parser.add_argument("--repeat", type=int, default=1, help="make each image this many times, report the fastest "
                        "(2 or more leaves out the first call's one-time costs)")
    args = parser.parse_args(argv)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        parser.error("start it with torchrun, e.g. torchrun --standalone --nproc_per_node 2 -m "
                     "deltaconv_kernels.parallel")
    if min(args.height, args.width) < 4 or args.height % 4 or args.width % 4:
        parser.error(f"--height and --width must be positive multiples of 4 (latent /2, patch 2), got "
                     f"{args.height} x {args.width}")

    from deltaconv_kernels.integrations import diffusers as dd
    from deltaconv_kernels.parallel.denoisers import bytes_sent, patch_parallel
    from deltaconv_kernels.testing import relative_errors, tolerance

    if args.threads:
        torch.set_num_threads(args.threads)
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if use_cuda else torch.device("cpu")
    try:
        pipe = _pipeline(args.dim, args.layers, device)
        dd.convert(pipe)
        pipe.clock = _DenoiserClock(pipe.transformer)
        with torch.no_grad():
            alone, t_alone = _fastest(pipe, args, device)
            patch_parallel(pipe)
            together, t_together = _fastest(pipe, args, device)
        max_rel, norm_rel = relative_errors(together, alone)
        tol = tolerance(torch.float32)
        ok = max_rel <= tol.max_rel and norm_rel <= tol.norm_rel
        if rank == 0:
            sent = {k: v // (args.steps * max(1, args.repeat)) for k, v in bytes_sent(pipe).items()}
            print(f"{world} ranks, image {args.height}x{args.width} px ({args.height // 4}x{args.width // 4} "
                  f"tokens), {args.steps} steps: max_rel={max_rel:.3g} norm_rel={norm_rel:.3g} vs one process "
                  f"({'equal' if ok else 'DIFFERENT'} within the fp32 tolerance)")
            print(f"rank 0 bytes sent per step: {sent}")
            print(f"wall time per image (of which in the denoiser): one process {t_alone[0]:.3f} s "
                  f"({t_alone[1]:.3f} s), {world} ranks {t_together[0]:.3f} s ({t_together[1]:.3f} s)")
        return 0 if ok else 1
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
