"""`python -m deltaconv_kernels.parallel.report`: the measurements of band parallelism for benchmarks/RESULTS.md, as
markdown on stdout: exactness against one process (block and tiny-sized pipelines, 2-4 gloo processes), the
bytes a rank sends per step, counted and from the formula, and the per-step volume at 1K/4K/16K next to Ulysses
and ring attention (formulas)."""

from __future__ import annotations

import argparse

import torch

from deltaconv_kernels.parallel.bands import split_rows
from deltaconv_kernels.parallel.checks import block_cases, combine, pipeline_cases
from deltaconv_kernels.parallel.cost import block_bytes_sent, ring_bytes_per_layer, ulysses_bytes_per_layer
from deltaconv_kernels.parallel.launch import run_local

BLOCK_CASES = [
    dict(h=13, w=7, kernel_size=5),
    dict(h=11, w=5, kernel_size=9, gate="sigmoid"),
    dict(h=9, w=6, kernel_size=7, scales=(1.0, 0.5, 0.25)),
    dict(h=12, w=7, kernel_size=5, dtype=torch.float16),
]
# PixArt-Σ (docs/DESIGN.md §1): 28 blocks, hidden 1152, K = 13, Ci = 576, scales (1, 0.5), patch 2, VAE factor 8,
# 8 output channels (learned sigma), CFG batch 2, fp16.
PIXART_SIGMA = dict(layers=28, hidden=1152, kernel_size=13, inner=576, scales=(1.0, 0.5), patch=2, vae=8,
                    out_channels=8, batch=2, element_size=2)


def _check(outcomes):
    for o in outcomes:
        if not o.ok:
            raise RuntimeError(f"rank {o.rank}: {o.error}")
    return [o.value for o in outcomes]


def exactness_rows(worlds) -> list[str]:
    rows = ["| what | ranks | max_rel | norm_rel |", "|---|---|---|---|"]
    for world in worlds:
        values = _check(run_local(block_cases, world, BLOCK_CASES, timeout_s=300))
        for i, case in enumerate(BLOCK_CASES):
            max_rel, norm_rel = combine([v[i] for v in values])
            what = (f"block {case['h']}x{case['w']} K{case['kernel_size']} scales {case.get('scales', (1.0, 0.5))} "
                    f"{case.get('gate', 'scaled')} {str(case.get('dtype', torch.float32)).split('.')[-1]}")
            rows.append(f"| {what} | {world} | {max_rel:.2g} | {norm_rel:.2g} |")
    return rows


def pipeline_rows(worlds, support_path: str) -> list[str]:
    import sys
    sys.path.insert(0, support_path)
    import tiny_models
    runs = [(tiny_models.tiny_pixart_pipeline, dict(kind="pixart", height=36, width=28), "PixArt 9x7 tokens"),
            (tiny_models.tiny_dit_pipeline, dict(kind="dit", height=14, width=14), "DiT 7x7 tokens"),
            (tiny_models.tiny_sd_pipeline, dict(kind="sd", height=54, width=18), "SD1.5 U-Net 27x9 latent")]
    rows = ["| pipeline (2 steps, image) | ranks | max_rel | norm_rel | rank 0 bytes sent per step |",
            "|---|---|---|---|---|"]
    for build, case, name in runs:
        for world in worlds:
            values = _check(run_local(pipeline_cases, world, build, [case], timeout_s=600,
                                      preload=("diffusers", "tiny_models")))
            max_rel, norm_rel = combine([v[0] for v in values])
            per_step = {k: v // values[0][0]["steps"] for k, v in values[0][0]["sent"].items()}
            rows.append(f"| {name} | {world} | {max_rel:.2g} | {norm_rel:.2g} | {per_step} |")
    return rows


TINY_PIXART = dict(layers=2, hidden=16, kernel_size=5, inner=8, scales=(1.0, 0.5), patch=2, vae=2, out_channels=8,
                   batch=2, element_size=4)  # tests/support/tiny_models.tiny_pixart converted with K = 5, fp32


def counted_rows(support_path: str) -> list[str]:
    """Bytes counted in a tiny PixArt run with aligned bands (16x12 tokens, K = 5, 2 ranks) next to the formula."""
    import sys
    sys.path.insert(0, support_path)
    import tiny_models
    case = dict(kind="pixart", height=64, width=48, kernel_size=5)
    values = _check(run_local(pipeline_cases, 2, tiny_models.tiny_pixart_pipeline, [case], timeout_s=600,
                              preload=("diffusers", "tiny_models")))
    rows = ["| rank | counted bytes per step (halo + pooled + bias + gather) | formula | input check |",
            "|---|---|---|---|"]
    for rank, v in enumerate(values):
        sent = {k: n // v[0]["steps"] for k, n in v[0]["sent"].items()}
        counted = sum(n for k, n in sent.items() if k != "check")
        formula = transformer_step_bytes(TINY_PIXART, 16, 12, 2, neighbours=1)
        rows.append(f"| {rank} | {counted} | {formula} | {sent['check']} |")
    return rows


def transformer_step_bytes(cfg: dict, token_rows: int, token_cols: int, world: int, neighbours: int = 2) -> int:
    """Bytes one rank with `neighbours` neighbours sends per denoiser step (formula): every block's halos and
    pooled bias, and its share of the output gather (its band padded to the thickest)."""
    blocks = cfg["layers"] * block_bytes_sent(neighbours, token_cols, cfg["hidden"], cfg["inner"],
                                              cfg["kernel_size"], cfg["scales"], cfg["batch"],
                                              cfg["element_size"], token_rows)
    thickest = max(e - s for s, e in split_rows(token_rows, world))
    gather = cfg["batch"] * cfg["out_channels"] * thickest * cfg["patch"] * token_cols * cfg["patch"] * \
        cfg["element_size"]
    return blocks + gather


def cost_rows(world: int) -> list[str]:
    cfg = PIXART_SIGMA
    rows = ["| image | token map | ΔConv band parallel, per rank (formula) | Ulysses, per rank | Ring, per rank | "
            "Ulysses / ΔConv |", "|---|---|---|---|---|---|"]
    for px in (1024, 4096, 16384):
        t = px // cfg["vae"] // cfg["patch"]
        ours = transformer_step_bytes(cfg, t, t, world)
        pixels = cfg["batch"] * t * t
        uly = cfg["layers"] * ulysses_bytes_per_layer(pixels, cfg["hidden"], world, cfg["element_size"])
        ring = cfg["layers"] * ring_bytes_per_layer(pixels, cfg["hidden"], cfg["element_size"])
        rows.append(f"| {px // 1024}K ({px}^2) | {t}x{t} | {ours / 2**20:.1f} MiB | {uly / 2**20:.0f} MiB | "
                    f"{ring / 2**20:.0f} MiB | {uly / ours:.0f}x |")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deltaconv_kernels.parallel.report", description=__doc__)
    parser.add_argument("--support", default="tests/support", help="folder of tiny_models.py (the tests' models)")
    parser.add_argument("--worlds", default="2,3,4")
    parser.add_argument("--cost-world", type=int, default=8)
    parser.add_argument("--sections", default="block,pipelines,counted,cost")
    args = parser.parse_args(argv)
    worlds = [int(w) for w in args.worlds.split(",")]
    sections = args.sections.split(",")
    if "block" in sections:
        print("\n".join(exactness_rows(worlds)) + "\n")
    if "pipelines" in sections:
        print("\n".join(pipeline_rows(worlds, args.support)) + "\n")
    if "counted" in sections:
        print("\n".join(counted_rows(args.support)) + "\n")
    if "cost" not in sections:
        return 0
    print(f"Per denoiser step, PixArt-Σ, {args.cost_world} ranks, CFG batch 2, fp16:\n")
    print("\n".join(cost_rows(args.cost_world)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
