"""Per-rank functions that compare band-parallel results with the one-process ones (run by `launch.run_local`
in the tests and for benchmarks/RESULTS.md). Each rank computes the one-process result itself and returns its
errors, so a comparison needs no extra communication."""

from __future__ import annotations

import torch
import torch.distributed as dist

from deltaconv_kernels.modules import DeltaConvBlock
from deltaconv_kernels.parallel.bands import check_bands, split_rows
from deltaconv_kernels.parallel.block import band_block_forward
from deltaconv_kernels.parallel.comm import BandComm


def block_case(comm: BandComm, h: int, w: int, dim: int = 16, kernel_size: int = 5, scales=(1.0, 0.5),
               gate: str = "scaled", dtype: torch.dtype = torch.float32, backend: str | None = None,
               bands=None, batch: int = 2, seed: int = 0) -> dict:
    """One block on an `h x w` map split as `bands` (default: even): this rank's rows of the band-parallel
    output against the same rows of the one-process block; errors relative to the whole one-process output."""
    torch.manual_seed(seed)
    block = DeltaConvBlock(dim, kernel_size, scales, gate=gate, backend=backend).to(dtype)
    x = torch.randn(batch, h, w, dim).to(dtype)
    bands = check_bands(bands, h, comm.world) if bands is not None else split_rows(h, comm.world)
    s, e = bands[comm.rank]
    with torch.no_grad():
        whole = block(x)
        before = sum(comm.sent.values())
        mine = band_block_forward(block, x[:, s:e].contiguous(), comm, bands)
    sent = sum(comm.sent.values()) - before
    expected = whole[:, s:e]
    diff = (mine.double() - expected.double())
    scale_max = whole.double().abs().max().item()
    return dict(rank=comm.rank, shape=tuple(mine.shape), max_abs=diff.abs().max().item() if diff.numel() else 0.0,
                scale_max=scale_max, sq_err=diff.pow(2).sum().item(), sq_ref=whole.double().pow(2).sum().item(),
                sent=sent, expected_shape=tuple(expected.shape))


def block_cases(rank: int, world: int, cases: list[dict]) -> list[dict]:
    """`block_case` for each case (keyword dicts) on the default group; a list of per-case results."""
    comm = BandComm(timeout_s=30.0)
    assert comm.rank == rank and comm.world == world == dist.get_world_size()
    return [block_case(comm, **case) for case in cases]


def combine(per_rank: list[dict]) -> tuple[float, float]:
    """(max_rel, norm_rel) of the whole band-parallel output, as testing.relative_errors defines them, from
    the per-rank results of one case."""
    scale_max = per_rank[0]["scale_max"]
    max_rel = max(r["max_abs"] for r in per_rank) / max(scale_max, 1e-30)
    norm_rel = (sum(r["sq_err"] for r in per_rank) / max(per_rank[0]["sq_ref"], 1e-300)) ** 0.5
    return max_rel, norm_rel



def _run_pipeline(pipe, kind: str, height: int, width: int, steps: int, seed: int) -> torch.Tensor:
    """One image batch of a tiny pipeline as a float tensor [B, 3, H, W]."""
    g = torch.Generator().manual_seed(seed)
    if kind == "dit":
        # DiTPipeline samples latents of the transformer's configured sample_size (square).
        pipe.transformer.register_to_config(sample_size=height)
        return pipe(class_labels=[1, 3], guidance_scale=1.0, num_inference_steps=steps, generator=g,
                    output_type="pt").images
    cond = torch.randn(1, 5, 32, generator=g)
    uncond = torch.randn(1, 5, 32, generator=g)
    mask = torch.ones(1, 5)
    if kind == "pixart":
        # The pipeline's multiple-of-8 pixel check is the full-size VAE's (factor 8); the tiny VAE's factor is 2,
        # so odd token maps need pixel sizes it refuses: skip the check, not the pipeline.
        pipe.check_inputs = lambda *a, **k: None
        return pipe(prompt_embeds=cond, prompt_attention_mask=mask, negative_prompt_embeds=uncond,
                    negative_prompt_attention_mask=mask, height=height, width=width, num_inference_steps=steps,
                    guidance_scale=4.5, use_resolution_binning=False, generator=g, output_type="pt").images
    if kind == "sd":
        pipe.check_inputs = lambda *a, **k: None
        return pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, height=height, width=width,
                    num_inference_steps=steps, guidance_scale=5.0, generator=g, output_type="pt").images
    raise ValueError(f"kind must be 'dit', 'pixart' or 'sd', got {kind!r}")


def pipeline_cases(rank: int, world: int, build, cases: list[dict]) -> list[dict]:
    """For each case (kind, height, width, steps, seed; kernel_size: one K for all layers, else the released
    ones): the image of `build()` (a tiny pipeline) converted with ΔConvBlocks, on one process and band-parallel
    on the default group; errors and bytes sent per step."""
    from deltaconv_kernels.integrations import diffusers as dd
    from deltaconv_kernels.parallel.denoisers import bytes_sent, patch_parallel, unpatch_parallel
    out = []
    for case in cases:
        kind, height, width = case["kind"], case["height"], case["width"]
        steps, seed = case.get("steps", 2), case.get("seed", 0)
        torch.manual_seed(seed)
        pipe = build()
        dd.convert(pipe, **({"kernel_sizes": case["kernel_size"]} if "kernel_size" in case else {}))
        with torch.no_grad():
            whole = _run_pipeline(pipe, kind, height, width, steps, seed)
            patch_parallel(pipe, timeout_s=60.0)
            mine = _run_pipeline(pipe, kind, height, width, steps, seed)
            sent = dict(bytes_sent(pipe))
            unpatch_parallel(pipe)
        diff = (mine.double() - whole.double())
        out.append(dict(rank=rank, shape=tuple(mine.shape), max_abs=diff.abs().max().item(),
                        scale_max=whole.double().abs().max().item(), sq_err=diff.pow(2).sum().item(),
                        sq_ref=whole.double().pow(2).sum().item(), sent=sent, steps=steps))
    return out


def failure_drill(rank: int, world: int, victim: int, how: str, timeout_s: float) -> float:
    """Band-parallel block forwards on every rank while rank `victim` fails: "raise" (an exception), "exit"
    (the process ends abruptly) or "hang" (it stops answering for 3 timeouts, then gives up). The other ranks
    must raise RankFailureError; returns the seconds this rank spent before that (the caller checks the bound)."""
    import os
    import time
    comm = BandComm(timeout_s=timeout_s)
    start = time.monotonic()
    if rank == victim:
        if how == "raise":
            raise RuntimeError(f"rank {rank} failed on purpose")
        if how == "exit":
            os._exit(3)
        time.sleep(3 * timeout_s)
        raise RuntimeError(f"rank {rank} hung on purpose")
    for _ in range(3):  # the drill fails in the first forward; more would only show that it does not hang
        block_case(comm, h=4 * world + 1, w=5, kernel_size=5)
    return time.monotonic() - start


def mismatch_drill(rank: int, world: int, victim: int, fields: list[str]) -> list[dict]:
    """For each field ("size", "seed" or "dtype"): a patched tiny DiT called with inputs that differ on rank
    `victim` in that field. Every rank must raise InputMismatchError before any band work: returns, per field,
    the error (None if there was none) and the bytes sent (only the input check's)."""
    from diffusers import DiTTransformer2DModel

    from deltaconv_kernels.integrations import diffusers as dd
    from deltaconv_kernels.parallel.comm import InputMismatchError
    from deltaconv_kernels.parallel.denoisers import bytes_sent, patch_parallel
    out = []
    for field in fields:
        torch.manual_seed(0)
        model = DiTTransformer2DModel(sample_size=8, in_channels=4, out_channels=8, num_layers=1,
                                      num_attention_heads=2, attention_head_dim=8, patch_size=2,
                                      num_embeds_ada_norm=10).eval()
        dd.convert(model)
        patch_parallel(model, timeout_s=20.0)
        size = 10 if rank == victim and field == "size" else 8
        g = torch.Generator().manual_seed(1 if rank == victim and field == "seed" else 0)
        latent = torch.randn(1, 4, size, size, generator=g)
        if rank == victim and field == "dtype":
            latent = latent.double()
        error = None
        try:
            with torch.no_grad():
                model(latent, timestep=torch.tensor([5]), class_labels=torch.tensor([1]))
        except InputMismatchError as e:
            error = str(e)
        out.append(dict(field=field, error=error, sent=bytes_sent(model)))
    return out
