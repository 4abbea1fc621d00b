"""Distillation of self-attention into ΔConvBlocks (paper §4.3, docs/DESIGN.md §6).

Modules, one job each: `losses` (Min-SNR-weighted output MSE, feature MSE), `data` (latents files, image folders,
random data, aspect-ratio buckets, resumable batch order), `models` (calling diffusers denoisers uniformly),
`checkpointing` (atomic checkpoints, RNG state), `trainer` (`DistillConfig`, `DistillTrainer` on accelerate),
`evaluation` (Fréchet distance, DINOv2 score, CLIP score), `plots`, `initialise` (`convert(..., init=...)`: the
attention-informed start, docs/DESIGN.md §10), `fit` (its step 0: least squares of proj_out/pool_proj to the
attention's outputs), and `cli` (`deltaconv distill`).
Nothing is imported here, so `deltaconv distill --help` stays fast and the metrics work without diffusers.
"""
