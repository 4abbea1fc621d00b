"""Closed-form initialisation of a `DeltaConvBlock` from the self-attention it replaces (docs/DESIGN.md §10).

A teacher layer computes `out_i = M sum_j A_ij x_j + c` with `M = W_o W_v`, `c = W_o b_v + b_o`. With the
head-averaged mean softmax pattern relative to the query, `a(d)`, the block is set so that it starts at

    out = conv_{a cropped to K x K}(M x) + beta M mean(x) + c,      beta = 1 - sum(cropped a),

the best the block's linear, translation-invariant part can say about the teacher before any training:
- a-rows of `proj_in` = `V_r^T L^-1`, a-columns of `proj_out` = `U_r s_r` from the whitened truncated SVD
  `M L = U s V^T` (`S = E[x x^T] = L L^T`, r = Ci/2): the rank-r value path that is best on the inputs' own
  distribution, with whitened (unit-variance) inner channels;
- the a-half of the full-resolution stage's kernel = the cropped pattern, the other stages' a-halves zero (their
  `proj_out` columns get the same `U_r s_r`, so they start trainable);
- gate: g-rows of `proj_in` zero, g-half kernels the centre tap, the g bias (and the `proj_out` scale) chosen
  so that the gate multiplies by exactly 1: it starts constant and stays trainable;
- `pool_proj = beta M` carries the far-field mass through the pooled bias; `proj_out.bias = c`.

This module is pure tensor math (no diffusers): the statistics come from `analysis.attention_stats`, the value
path from the layer's own weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from deltaconv_kernels.modules import DeltaConvBlock

EIGEN_FLOOR = 1e-10  # relative floor for the eigenvalues of S (directions the inputs never take)
PATTERN_SUM_TOL = 1e-3  # softmax rows sum to 1: a mean pattern summing to anything else is not one


@dataclass
class LayerStatistics:
    """What the closed form needs from one attention layer's calibration run.

    pattern: `[2H - 1, 2W - 1]` float64, the mean softmax row relative to its query (offset (dy, dx) at
    `[H - 1 + dy, W - 1 + dx]`), averaged over samples, heads, sampled queries and timesteps; sums to 1.
    second_moment: `[C, C]` float64, `E[x x^T]` over every token of the attn1 inputs."""
    hw: tuple[int, int]
    pattern: torch.Tensor
    second_moment: torch.Tensor
    maps: int      # softmax rows averaged into `pattern`
    tokens: int    # input tokens averaged into `second_moment`

    def check(self, name: str) -> None:
        h, w = self.hw
        if tuple(self.pattern.shape) != (2 * h - 1, 2 * w - 1):
            raise ValueError(f"{name}: pattern must be [2H-1, 2W-1] = [{2 * h - 1}, {2 * w - 1}] for its {h}x{w} "
                             f"map, got {list(self.pattern.shape)}")
        c = self.second_moment.shape[0]
        if self.second_moment.shape != (c, c):
            raise ValueError(f"{name}: second_moment must be square [C, C], got {list(self.second_moment.shape)}")
        for label, t in (("pattern", self.pattern), ("second_moment", self.second_moment)):
            if not torch.isfinite(t).all():
                raise ValueError(f"{name}: the attention statistics are not finite ({label} has NaN/inf): the "
                                 "calibration run overflowed (run it in float32) or its inputs are not finite")
        if self.maps < 1 or self.tokens < 1:
            raise ValueError(f"{name}: statistics of {self.maps} maps and {self.tokens} tokens: the layer never ran")
        total = float(self.pattern.sum())
        if abs(total - 1.0) > PATTERN_SUM_TOL:
            raise ValueError(f"{name}: the mean attention pattern sums to {total:.6f}, not 1: not softmax rows")


def value_path(w_v: torch.Tensor, b_v: torch.Tensor | None, w_o: torch.Tensor, b_o: torch.Tensor | None,
               rescale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """`M = W_o W_v / rescale` `[C, C]` and `c = (W_o b_v + b_o) / rescale` `[C]` in float64."""
    w_v, w_o = w_v.detach().double(), w_o.detach().double()
    m = w_o @ w_v
    c = torch.zeros(w_o.shape[0], dtype=torch.float64, device=w_o.device)
    if b_v is not None:
        c = c + w_o @ b_v.detach().double()
    if b_o is not None:
        c = c + b_o.detach().double()
    return m / rescale, c / rescale


def crop_pattern(pattern: torch.Tensor, hw: tuple[int, int], kernel_size: int, name: str = "layer") -> torch.Tensor:
    """The K x K window of a relative pattern centred at offset (0, 0): `[K, K]`."""
    h, w = hw
    if kernel_size > 2 * h - 1 or kernel_size > 2 * w - 1:
        raise ValueError(f"{name}: kernel_size {kernel_size} is larger than its {h}x{w} map allows (a query sees "
                         f"offsets up to ±{h - 1} x ±{w - 1}, i.e. K <= {min(2 * h, 2 * w) - 1}): convert with a "
                         "smaller kernel_sizes for this layer")
    r = kernel_size // 2
    return pattern[h - 1 - r:h + r, w - 1 - r:w + r]


def whitened_svd(m: torch.Tensor, second_moment: torch.Tensor, rank: int):
    """`(P [rank, C], Q [C, rank], kept)`: `Q P` is the rank-`rank` approximation of `m` that is best in the
    input-weighted norm `E||(M - QP) x||^2`, with `P S P^T = I` on its non-zero rows. `kept` = share of
    `E||M x||^2` that the truncation keeps. Rows/columns beyond rank(M L) are zero."""
    evals, evecs = torch.linalg.eigh(second_moment)
    floor = EIGEN_FLOOR * float(evals.max().clamp(min=1e-300))
    root = evals.clamp(min=floor).sqrt()
    l_mat = evecs * root                      # S ~= L L^T
    l_inv = (evecs / root).t()                # L^-1
    u, s, vh = torch.linalg.svd(m @ l_mat)
    r = min(rank, s.numel())
    c = m.shape[0]
    p = torch.zeros(rank, c, dtype=m.dtype, device=m.device)
    q = torch.zeros(c, rank, dtype=m.dtype, device=m.device)
    p[:r] = vh[:r] @ l_inv
    q[:, :r] = u[:, :r] * s[:r]
    energy = float(s.square().sum())
    kept = float(s[:r].square().sum()) / energy if energy > 0 else 1.0
    return p, q, kept


def gate_start(block: DeltaConvBlock) -> tuple[float, float]:
    """`(g bias, proj_out factor)` so that, with g-rows zero and a centre-tap g kernel of 1, the gate multiplies
    the a-half by exactly 1: sigmoid(0) = 1/2 is undone by a factor 2; scaled: g * gate_scale = 1."""
    if block.gate == "sigmoid":
        return 0.0, 1.0 / (1.0 / (1.0 + math.exp(-0.0)))
    if block.gate == "scaled":
        return 1.0 / block.gate_scale, 1.0
    raise ValueError(f"unknown gate {block.gate!r}")  # pragma: no cover - DeltaConvBlock validates it


def full_resolution_stage(block: DeltaConvBlock, name: str = "layer") -> int:
    if 1.0 not in block.scales:
        raise ValueError(f"{name}: init='attention' puts the attention pattern into the full-resolution stage, but "
                         f"the block's scales {block.scales} have no 1.0")
    return block.scales.index(1.0)


@torch.no_grad()
def closed_form_init(block: DeltaConvBlock, stats: LayerStatistics, m: torch.Tensor, c: torch.Tensor,
                     name: str = "layer") -> dict:
    """Set every parameter of `block` from the statistics and the value path (see the module docstring).
    Returns a JSON-able record of what was set (beta, kept energy, rank)."""
    stats.check(name)
    dim = block.dim
    if m.shape != (dim, dim) or c.shape != (dim,) or stats.second_moment.shape != (dim, dim):
        raise ValueError(f"{name}: value path M {list(m.shape)}, c {list(c.shape)} and second moment "
                         f"{list(stats.second_moment.shape)} must match the block's dim {dim}")
    if not (torch.isfinite(m).all() and torch.isfinite(c).all()):
        raise ValueError(f"{name}: the attention's value/output weights are not finite")
    k = block.kernel_size
    kernel = crop_pattern(stats.pattern.double(), stats.hw, k, name)
    full = full_resolution_stage(block, name)
    half = block.inner_dim // 2
    beta = 1.0 - float(kernel.sum())
    m, c = m.detach().double().cpu(), c.detach().double().cpu()  # the math on the CPU; copy_ moves the results
    p, q, kept = whitened_svd(m, stats.second_moment.double().cpu(), half)
    g_bias, out_factor = gate_start(block)
    dead = q.abs().sum(0) == 0  # beyond rank(M L): keep their random proj_in rows so they can start learning

    in_w, in_b = block.proj_in.weight, block.proj_in.bias
    new_in = in_w.detach().double().cpu().clone()
    new_in[:half][~dead] = p[~dead].to(new_in)
    new_in[half:] = 0
    in_w.copy_(new_in)
    in_b.zero_()
    in_b[half:] = g_bias
    centre = torch.zeros(k, k, dtype=torch.float64)
    centre[k // 2, k // 2] = 1.0
    for i, stage in enumerate(block.stages):
        weight = torch.zeros(k, k, block.inner_dim, dtype=torch.float64)
        if i == full:
            weight[:, :, :half] = kernel[:, :, None]
        else:  # zero a-half: starts silent; dead channels (zero proj_out column too) get the pattern, not stuck
            weight[:, :, :half][:, :, dead] = kernel[:, :, None]
        weight[:, :, half:] = centre[:, :, None]
        stage.weight.copy_(weight)
    block.proj_out.weight.copy_(torch.cat([q * out_factor] * len(block.stages), dim=1))
    block.proj_out.bias.copy_(c)
    block.pool_proj.weight.copy_(beta * m)
    block.pool_proj.bias.zero_()
    return {"kernel_size": k, "hw": list(stats.hw), "kernel_mass": float(kernel.sum()), "beta": beta,
            "rank": int((~dead).sum()), "inner_half": half, "whitened_energy_kept": kept,
            "full_resolution_stage": full, "gate": block.gate, "maps": stats.maps, "tokens": stats.tokens}
