"""Explicit O(N^2) attention written from the formulas (dense scores, explicit masks), the baselines' tests'
reference, and random inputs and parameters for them."""

from __future__ import annotations

import math

import torch

F64 = torch.float64


def randomize(layer: torch.nn.Module, gen: torch.Generator) -> torch.nn.Module:
    """Random non-zero values for every parameter (default inits leave biases and LayerNorm trivial)."""
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64) * (0.5 / math.sqrt(max(p.shape[-1], 1))) + 0.01)
    return layer


def make(cls, dim, heads, gen, **kw):
    return randomize(cls(dim, heads, dtype=F64, **kw), gen).eval()


def explicit_qkv(layer, x):
    b, n, c = x.shape
    split = lambda t: t.view(b, n, layer.heads, c // layer.heads).transpose(1, 2)  # noqa: E731
    return split(layer.to_q(x)), split(layer.to_k(x)), split(layer.to_v(x))


def explicit_out(layer, y):
    b, h, n, d = y.shape
    return layer.to_out[0](y.transpose(1, 2).reshape(b, n, h * d))


def masked_attention(q, k, v, mask=None):
    """softmax(Q K^T / sqrt(d) masked) V with the full N x N score matrix."""
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return s.softmax(-1) @ v


def neighborhood_mask(height, width, k):
    """[N, N] mask: query (i, j) sees keys in rows [ri, ri + min(K, H)) and cols [cj, cj + min(K, W)) with the
    window start clamped into the map (NATTEN's definition), written with plain Python loops."""
    def start(i, length):
        return min(max(i - k // 2, 0), max(length - k, 0))
    kh, kw = min(k, height), min(k, width)
    m = torch.zeros(height * width, height * width, dtype=torch.bool)
    for i in range(height):
        for j in range(width):
            r0, c0 = start(i, height), start(j, width)
            for r in range(r0, r0 + kh):
                m[i * width + j, r * width + c0:r * width + c0 + kw] = True
    return m


def rand_x(b, n, c, gen, dtype=F64):
    return torch.randn(b, n, c, generator=gen, dtype=F64).to(dtype)
