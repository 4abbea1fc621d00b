"""Attention-Mediators-style attention (Pu et al., "Efficient Diffusion Transformer with Step-wise Dynamic
Attention Mediators"): m mediator tokens T = avg-pool of the query map to an (mh, mw) grid; per head

    V_T = softmax(T K^T s) V            (mediators gather from all tokens:   m x N)
    y   = softmax(Q T^T s) V_T + dwconv3x3(V)   (tokens read from the mediators: N x m)

then the out projection. Linear in N for a fixed m; the depthwise 3x3 conv of V restores local detail."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from deltaconv_kernels.baselines.base import AttentionBaseline


def mediator_grid(mediators) -> tuple[int, int]:
    """(mh, mw) from an int m (a perfect square) or a pair."""
    if isinstance(mediators, int) and not isinstance(mediators, bool):
        side = math.isqrt(mediators)
        if mediators < 1 or side * side != mediators:
            raise ValueError(f"an int mediators must be a positive perfect square (use a pair (mh, mw) "
                             f"otherwise), got {mediators}")
        return side, side
    grid = tuple(mediators)
    if len(grid) != 2 or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grid):
        raise ValueError(f"mediators must be a perfect-square int or a pair of positive ints, got {mediators!r}")
    return grid


def mediator_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int],
                       grid: tuple[int, int], scale: float) -> torch.Tensor:
    """The two softmax attentions through mediators, on `[B, heads, N, d]` (without the conv term)."""
    b, h, n, d = q.shape
    qmap = q.reshape(b * h, size[0], size[1], d).permute(0, 3, 1, 2)
    t = F.adaptive_avg_pool2d(qmap, grid).flatten(2).transpose(1, 2).reshape(b, h, grid[0] * grid[1], d)
    v_t = _softmax((t @ k.transpose(-1, -2)) * scale) @ v        # [B, h, m, d]
    return _softmax((q @ t.transpose(-1, -2)) * scale) @ v_t      # [B, h, N, d]


def _softmax(s: torch.Tensor) -> torch.Tensor:
    """Softmax in at least fp32 (fp16/bf16 scores would lose the small weights), back in the input dtype."""
    return s.softmax(-1, dtype=torch.promote_types(s.dtype, torch.float32)).to(s.dtype)


class MediatorAttention(AttentionBaseline):
    """Mediator attention with `mediators` tokens (int m, a perfect square, or a grid (mh, mw); default 8 x 8)."""

    def __init__(self, dim: int, heads: int = 8, mediators=(8, 8), device=None, dtype=None, **kwargs):
        super().__init__(dim, heads, device=device, dtype=dtype, **kwargs)
        self.grid = mediator_grid(mediators)
        self.dwc = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, device=device, dtype=dtype)

    def _attend(self, q, k, v, x, size):
        b, h, n, d = q.shape
        y = mediator_attention(q, k, v, size, self.grid, self.scale)
        vmap = self.merge_heads(v).transpose(1, 2).reshape(b, self.dim, size[0], size[1])
        local = self.dwc(vmap).flatten(2).transpose(1, 2)  # [B, N, C]
        return y + self.split_heads(local)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mediators={self.grid}"
