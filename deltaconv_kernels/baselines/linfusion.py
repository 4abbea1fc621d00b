"""LinFusion-style generalized linear attention (Liu et al. 2024), exactly docs/DESIGN.md §7:

    q = W_q(x + φ_q(x)),  k = W_k(x + φ_k(x)),  v = W_v x,  φ = Linear -> LayerNorm -> LeakyReLU -> Linear
    per head: q' = elu(q) + 1,  k' = elu(k) + 1
    y = q' (k'^T v / N) / (q' · mean(k') + 1e-4),  then the out projection.

Cost is linear in N: the `d x d` state `k'^T v` replaces the `N x N` attention map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deltaconv_kernels.baselines.base import AttentionBaseline

EPS = 1e-4


def _phi(dim: int, factory: dict) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim, **factory), nn.LayerNorm(dim, **factory), nn.LeakyReLU(),
                         nn.Linear(dim, dim, **factory))


def generalized_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`q'(k'^T v / N) / (q' · mean_N(k') + 1e-4)` on `[B, heads, N, d]` (q, k before the elu + 1 maps)."""
    n = q.shape[-2]
    qp, kp = F.elu(q) + 1, F.elu(k) + 1
    state = kp.transpose(-1, -2) @ v / n                      # [B, h, d, d]
    normaliser = qp @ kp.mean(dim=-2).unsqueeze(-1) + EPS     # [B, h, N, 1]
    return (qp @ state) / normaliser


class LinFusionAttention(AttentionBaseline):
    """Generalized linear attention with the φ_q, φ_k branches. `size` is accepted and checked, not needed."""

    needs_size = False

    def __init__(self, dim: int, heads: int = 8, device=None, dtype=None, **kwargs):
        super().__init__(dim, heads, device=device, dtype=dtype, **kwargs)
        factory = {"device": device, "dtype": dtype}
        self.phi_q = _phi(dim, factory)
        self.phi_k = _phi(dim, factory)

    def project_qkv(self, x):
        q = self.to_q(x + self.phi_q(x))
        k = self.to_k(x + self.phi_k(x))
        return self.split_heads(q), self.split_heads(k), self.split_heads(self.to_v(x))

    def _attend(self, q, k, v, x, size):
        return generalized_linear_attention(q, k, v)
