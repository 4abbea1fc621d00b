"""Analytic FLOPs of ΔConvBlock and the attention baselines, in the paper's convention (docs/DESIGN.md §7):

- a multiply-add is 2 FLOPs (GEMMs, attention matmuls, convolutions);
- bias adds count (1 FLOP per output element);
- softmax, scaling, normalisation, activations, gating, pooling, interpolation and other elementwise ops do not;
- batch 2 by default (classifier-free guidance): self-attention is `2 * (4 N^2 C + 8 N C^2 + 4 N C)`.

Every count is a `Flops` breakdown (linear / attention / conv / bias) so that the parts
`torch.utils.flop_counter.FlopCounterMode` can see are checked separately (tests/bench/test_flops.py).
`method_flops` is the ideal count (each query against exactly its window); `executed_flops` what an implementation
computes: the windowed baselines' tiled references and flex_attention block masks compute more pairs
(`window_blocks` has their geometry). `python -m deltaconv_kernels.flops` prints the paper's Table 1 next to ours.
Imports from the package only torch-free modules: `geometry.pooled_size` (a stage's pooled size), `resolutions`
(the named image sizes),
`ditfastattn_schedule` (DiTFastAttn's plan) and `window_blocks` (the windowed implementations' pairs).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields

from deltaconv_kernels.baselines.ditfastattn_schedule import PUBLISHED_WINDOW, DiTFastAttnSchedule, window_half_width
from deltaconv_kernels.baselines.window_blocks import (
    BAND_IMPLS,
    NEIGHBORHOOD_IMPLS,
    band_flex_blocks,
    band_reference_pairs,
    flex_block_pairs,
    neighborhood_flex_blocks,
    neighborhood_reference_pairs,
)
from deltaconv_kernels.geometry import pooled_size
from deltaconv_kernels.resolutions import resolution

METHODS = ("deltaconv", "sdpa", "neighborhood", "ditfastattn", "linfusion", "mediator")


@dataclass(frozen=True)
class LayerShape:
    """A self-attention layer of a model: its channels, heads, how many image pixels one token spans per side
    (VAE /8, times the patch size for DiTs), and the ΔConvBlock kernel size of that layer."""

    name: str
    channels: int
    heads: int
    pixels_per_token: int
    kernel_size: int

    def tokens(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (h, w) for an image of height x width pixels."""
        h, w = height // self.pixels_per_token, width // self.pixels_per_token
        if h < 1 or w < 1:
            raise ValueError(f"an image of {height}x{width} px has no {self.name} tokens "
                             f"(one token spans {self.pixels_per_token} px)")
        return h, w


# PixArt-Σ: C = 1152, 16 heads, patch 2 on the /8 latent, K = 13 in all 28 blocks.
PIXART = LayerShape("pixart", 1152, 16, 16, 13)
# SD1.5's first attention level (down block 0): C = 320 at /8, 8 heads, K = 7 (docs/DESIGN.md §1 kernel sizes).
SD15 = LayerShape("sd15", 320, 8, 8, 7)
# SDXL's first attention level (down block 1): C = 640 at /16, 10 heads of 64, K = 9.
SDXL = LayerShape("sdxl", 640, 10, 16, 9)
LAYER_SHAPES = {s.name: s for s in (PIXART, SD15, SDXL)}


@dataclass(frozen=True)
class Flops:
    linear: float = 0.0     # projections (GEMMs over tokens), incl. the pooled-bias GEMM
    attention: float = 0.0  # token-token matmuls (QK^T, AV and their windowed / linear / mediator forms)
    conv: float = 0.0       # depthwise convolutions
    bias: float = 0.0       # bias adds

    @property
    def total(self) -> float:
        return self.linear + self.attention + self.conv + self.bias

    def __add__(self, other: Flops) -> Flops:
        return Flops(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __mul__(self, k: float) -> Flops:
        return Flops(*(getattr(self, f.name) * k for f in fields(self)))

    __rmul__ = __mul__


def _projections(n: int, c: int, count: int = 4, bias: bool = True) -> Flops:
    """`count` C -> C linear layers over n tokens."""
    return Flops(linear=count * 2 * n * c * c, bias=count * n * c if bias else 0)


def sdpa(h: int, w: int, c: int, batch: int = 2) -> Flops:
    """Full self-attention: q, k, v, out projections + QK^T and AV (2 N^2 C each)."""
    n = h * w
    return (_projections(n, c) + Flops(attention=4 * n * n * c)) * batch


def window_keys(length: int, kernel_size: int) -> int:
    """Keys per query along one axis of a neighborhood window (shifted inward at borders): min(K, L)."""
    return min(kernel_size, length)


def _check_impl(impl, impls, arg: str) -> None:
    if impl is not None and impl not in impls:
        raise ValueError(f"{arg} must be one of {impls} or None (the ideal count), got {impl!r}")


def neighborhood_pairs(h: int, w: int, kernel_size: int, impl: str | None = None) -> int:
    """(query, key) pairs of neighborhood attention over an h x w map, per head and sample: ideal (impl None:
    min(K,H) x min(K,W) keys per query), or those `impl` computes: "natten" the ideal (its fused kernels' tile
    padding not counted), "reference" every query tile (padded queries included) against its (tile + K - 1)^2
    key span, "flex" every listed flex_attention block whole (`window_blocks`)."""
    _check_impl(impl, NEIGHBORHOOD_IMPLS, "impl")
    if impl == "reference":
        return neighborhood_reference_pairs(h, w, kernel_size)
    if impl == "flex":
        return flex_block_pairs(neighborhood_flex_blocks(h, w, kernel_size), h * w)
    return h * w * window_keys(h, kernel_size) * window_keys(w, kernel_size)


def neighborhood(h: int, w: int, c: int, kernel_size: int, batch: int = 2, impl: str | None = None) -> Flops:
    """Neighborhood attention: each query attends to min(K,H) x min(K,W) keys (ideal, impl None), or the pairs
    `impl` computes (`neighborhood_pairs`)."""
    n = h * w
    return (_projections(n, c) + Flops(attention=4 * neighborhood_pairs(h, w, kernel_size, impl) * c)) * batch


def band_pairs(n: int, half_width: int) -> int:
    """Number of (query, key) pairs with |i - j| <= half_width among n tokens (the 1-D window)."""
    w = min(half_width, n - 1)
    return n * (2 * w + 1) - w * (w + 1)


def window_pairs(n: int, half_width: int, impl: str | None = None) -> int:
    """(query, key) pairs of DiTFastAttn's window pass over n tokens: ideal (impl None, `band_pairs`), or those
    `impl` computes: "reference" each query block against its key span (all n^2 when the band covers every
    pair), "flex" every listed flex_attention block whole."""
    _check_impl(impl, BAND_IMPLS, "window_impl")
    if impl == "reference":
        return band_reference_pairs(n, half_width)
    if impl == "flex":
        return flex_block_pairs(band_flex_blocks(n, half_width), n)
    return band_pairs(n, half_width)


def _ditfastattn_costs(n: int, c: int, window, window_impl: str | None = None) -> tuple[dict, Flops]:
    """Per-mode FLOPs of one DiTFastAttn step for one sample, and the extra window pass of a residual (ideal, or
    as `window_impl` computes it)."""
    win = Flops(attention=4 * window_pairs(n, window_half_width(n, window), window_impl) * c)
    per_mode = {
        "full": _projections(n, c) + Flops(attention=4 * n * n * c),
        "window_residual": _projections(n, c) + win,
        "share_timestep": Flops(),
    }
    return per_mode, win


def ditfastattn_step(h: int, w: int, c: int, mode: str, window: float | int = PUBLISHED_WINDOW,
                     batch: int = 2, window_impl: str | None = None) -> Flops:
    """FLOPs of one DiTFastAttn-style step in `mode` ("full" without the residual pass, "window_residual",
    "share_timestep"), the CFG halves not shared: what the latency benchmark times for its compressed step.
    `window_impl`: None for the ideal window pass, else as that implementation computes it (`window_pairs`)."""
    per_mode, _ = _ditfastattn_costs(h * w, c, window, window_impl)
    if mode not in per_mode:
        raise ValueError(f"mode must be one of {sorted(per_mode)}, got {mode!r}")
    return per_mode[mode] * batch


def ditfastattn(h: int, w: int, c: int, modes=None, window: float | int = PUBLISHED_WINDOW, cfg_share=None,
                batch: int = 2, window_impl: str | None = None) -> Flops:
    """Mean per-step FLOPs of DiTFastAttn-style attention over a plan of modes (see ditfastattn_schedule):
    "full" = full attention, plus the window pass for the residual only when a window step follows before the
    next full step (as the layer does), "window_residual" = projections + window attention, "share_timestep" =
    nothing. CFG sharing halves the batch of that step. `window`: tokens (64, as published) or a fraction of N.
    Default plan: our periodic heuristic, 20 steps with a full step every 5 (`DiTFastAttnSchedule.periodic`).
    `window_impl`: None for the ideal window passes, else as that implementation computes them."""
    modes = DiTFastAttnSchedule.periodic(20, 5).modes if modes is None else modes
    plan = DiTFastAttnSchedule(modes, cfg_share)
    per_mode, win = _ditfastattn_costs(h * w, c, window, window_impl)
    total = Flops()
    for step in range(len(plan)):
        cost = per_mode[plan.mode(step)] + (win if plan.needs_residual(step) else Flops())
        total = total + cost * (batch // 2 if plan.shares_cfg(step) else batch)
    return total * (1 / len(plan))


def linfusion(h: int, w: int, c: int, heads: int, batch: int = 2) -> Flops:
    """Generalized linear attention: 4 projections + φ_q, φ_k (two C x C linears each); k'^T v and q'·state
    (2 N C d each) and the normaliser q'·mean(k') (2 N C)."""
    n = h * w
    d = c // heads
    return (_projections(n, c, count=8) + Flops(attention=4 * n * c * d + 2 * n * c)) * batch


def mediator(h: int, w: int, c: int, mediators: int = 64, batch: int = 2) -> Flops:
    """Mediator attention: projections, T K^T, (.)V, Q T^T, (.)V_T (2 N m C each), a 3x3 depthwise conv of V
    with bias."""
    n = h * w
    return (_projections(n, c) + Flops(attention=8 * n * mediators * c, conv=2 * 9 * n * c, bias=n * c)) * batch


def deltaconv(h: int, w: int, c: int, kernel_size: int, scales=(1.0, 0.5), inter_ratio: float = 0.5,
              batch: int = 2) -> Flops:
    """ΔConvBlock (docs/DESIGN.md §1): proj_in (C -> Ci), per stage a K x K depthwise conv over Ci channels at the
    pooled size `geometry.pooled_size(H, W, s)`, proj_out (Ci/2 * S -> C), and the pooled-bias C x C GEMM once
    per sample."""
    n = h * w
    ci = int(c * inter_ratio)
    cat = ci // 2 * len(scales)
    conv = sum(2 * kernel_size * kernel_size * math.prod(pooled_size(h, w, s)) * ci for s in scales)
    per_sample = Flops(linear=2 * n * c * ci + 2 * n * cat * c + 2 * c * c, conv=conv, bias=n * ci + n * c + c)
    return per_sample * batch


def method_flops(method: str, shape: LayerShape, height: int, width: int, batch: int = 2,
                 ditfastattn_mode: str | None = None) -> Flops:
    """Ideal FLOPs of `method` at an image of height x width pixels for `shape` with the baselines' defaults
    (neighborhood window = the layer's ΔConvBlock K, 64 mediators, DiTFastAttn averaged over its 20-step periodic
    schedule, or one step in `ditfastattn_mode`)."""
    return _method_flops(method, shape, height, width, batch, ditfastattn_mode, None)


def executed_flops(method: str, shape: LayerShape, height: int, width: int, batch: int = 2, impl: str | None = None,
                   ditfastattn_mode: str | None = None) -> Flops:
    """The FLOPs `method` executes in implementation `impl` (same conventions and defaults as `method_flops`):
    for "neighborhood" impl is one of NEIGHBORHOOD_IMPLS (the layer's `.impl`), for "ditfastattn" one of
    BAND_IMPLS (the layer's `.window_impl`), both required; for the other methods executed == ideal and impl is
    not used (any implementation label, e.g. a ΔConv backend, is accepted)."""
    if method in ("neighborhood", "ditfastattn") and impl is None:
        allowed = NEIGHBORHOOD_IMPLS if method == "neighborhood" else BAND_IMPLS
        raise ValueError(f"impl must name the {method} implementation, one of {allowed}, got None")
    return _method_flops(method, shape, height, width, batch, ditfastattn_mode,
                         impl if method in ("neighborhood", "ditfastattn") else None)


def _method_flops(method, shape, height, width, batch, ditfastattn_mode, impl) -> Flops:
    h, w = shape.tokens(height, width)
    c = shape.channels
    if method == "deltaconv":
        return deltaconv(h, w, c, shape.kernel_size, batch=batch)
    if method == "sdpa":
        return sdpa(h, w, c, batch)
    if method == "neighborhood":
        return neighborhood(h, w, c, shape.kernel_size, batch, impl)
    if method == "ditfastattn":
        if ditfastattn_mode is not None:
            return ditfastattn_step(h, w, c, ditfastattn_mode, batch=batch, window_impl=impl)
        return ditfastattn(h, w, c, batch=batch, window_impl=impl)
    if method == "linfusion":
        return linfusion(h, w, c, shape.heads, batch)
    if method == "mediator":
        return mediator(h, w, c, batch=batch)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


# ---- the paper's Table 1 ("Mean FLOPs (G)") -------------------------------------------------------------------
PAPER_COLUMNS = ("512²", "1024²", "2K", "4K", "8K", "16K")  # the paper's column titles, as printed there
# The sizes (resolutions.py names) of each column. The self-attention values fix them: the paper's "2K" column is
# 2K (2048x2048) for PixArt but QHD (2560x1440) for SD1.5, and its "4K" column is 4K-DCI (4096x2160), not 4K
# (3840x2160). (The paper's other PixArt rows at "2K" are consistent with QHD instead: their FLOPs per token are
# constant from 1024² up only with that size.)
PAPER_SIZES = {
    "pixart": ("512", "1K", "2K", "4K-DCI", "8K", "16K"),
    "sd15": ("512", "1K", "QHD", "4K-DCI", "8K", "16K"),
}
PAPER_RESOLUTIONS = {model: tuple((resolution(n).height, resolution(n).width) for n in names)
                     for model, names in PAPER_SIZES.items()}
PAPER_TABLE1 = {  # GFLOPs as printed in the paper
    ("pixart", "sdpa"): (31.42, 241.63, 2821.94, 11741.69, 157546.49, 2487706.88),
    ("pixart", "ditfastattn"): (30.41, 207.62, 2125.26, 8717.07, 115012.85, 1807168.71),
    ("pixart", "linfusion"): (55.07, 220.29, 774.46, 1858.72, 6970.18, 27880.73),
    ("pixart", "deltaconv"): (8.43, 34.86, 122.54, 294.10, 1102.85, 4411.40),
    ("sd15", "sdpa"): (49.67, 714.08, 8587.98, 49149.21, 688821.39, 11010934.11),
    ("sd15", "linfusion"): (17.03, 68.11, 239.43, 574.64, 2154.89, 8619.54),
    ("sd15", "deltaconv"): (2.82, 12.56, 44.14, 105.94, 397.27, 1589.10),
}
PAPER_NAMES = {"sdpa": "Self-Attention", "ditfastattn": "DiTFastAttn", "linfusion": "LinFusion",
               "deltaconv": "ConvFusion", "neighborhood": "Neighborhood", "mediator": "Mediator"}


def table1_rows(batch: int = 2) -> list[dict]:
    """One row per (model, method): our GFLOPs at the paper's column sizes, the paper's where it has them,
    and paper / ours per column."""
    rows = []
    for model, sizes in PAPER_RESOLUTIONS.items():
        shape = LAYER_SHAPES[model]
        for method in METHODS:
            ours = [method_flops(method, shape, hh, ww, batch).total / 1e9 for hh, ww in sizes]
            paper = PAPER_TABLE1.get((model, method))
            ratio = [p / o for p, o in zip(paper, ours)] if paper else None
            rows.append({"model": model, "method": method, "ours": ours, "paper": paper, "paper_over_ours": ratio})
    return rows


def format_table1(batch: int = 2) -> str:
    lines = [f"Analytic GFLOPs per self-attention layer, batch {batch} (paper convention: MAC = 2 FLOPs, bias adds "
             "count, softmax and other elementwise ops do not)",
             f"{'model':7s} {'method':14s} {'':6s} " + " ".join(f"{c:>13s}" for c in PAPER_COLUMNS)]
    for row in table1_rows(batch):
        head = f"{row['model']:7s} {PAPER_NAMES[row['method']]:14s}"
        lines.append(f"{head} {'ours':6s} " + " ".join(f"{v:13,.2f}" for v in row["ours"]))
        if row["paper"]:
            lines.append(f"{'':22s} {'paper':6s} " + " ".join(f"{v:13,.2f}" for v in row["paper"]))
            lines.append(f"{'':22s} {'p/ours':6s} " + " ".join(f"{v:13.4f}" for v in row["paper_over_ours"]))
    lines.append("Sizes (the paper's columns): " + "; ".join(
        f"{m}: " + ", ".join(f"{n} ({resolution(n).height}x{resolution(n).width})" for n in names)
        for m, names in PAPER_SIZES.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Analytic FLOPs vs the paper's Table 1")
    parser.add_argument("--batch", type=int, default=2, help="batch size (2 = classifier-free guidance)")
    args = parser.parse_args(argv)
    print(format_table1(args.batch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
