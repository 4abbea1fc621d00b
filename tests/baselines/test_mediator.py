"""Mediator attention against its explicit formulation, and its arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from explicit_attention import explicit_out, explicit_qkv, make, rand_x

from deltaconv_kernels import baselines
from deltaconv_kernels.testing import assert_close


def test_mediator_matches_explicit_formulation(gen):
    height, width, grid, c, heads = 6, 8, (3, 2), 12, 3
    layer = make(baselines.MediatorAttention, c, heads, gen, mediators=grid)
    x = rand_x(2, height * width, c, gen)
    q, k, v = explicit_qkv(layer, x)
    d = c // heads
    # Mediators: mean of each 2 x 4 block of the query map (6x8 -> 3x2), block by block.
    qmap = q.reshape(2, heads, height, width, d)
    t = torch.stack([qmap[:, :, 2 * i:2 * i + 2, 4 * j:4 * j + 4].mean(dim=(2, 3))
                     for i in range(3) for j in range(2)], dim=2)  # [B, h, 6, d]
    s = d ** -0.5
    v_t = (t @ k.transpose(-1, -2) * s).softmax(-1) @ v
    y = (q @ t.transpose(-1, -2) * s).softmax(-1) @ v_t
    # 3x3 depthwise conv of V with zero padding, as explicit shifted sums.
    vmap = v.transpose(1, 2).reshape(2, height, width, c)
    padded = F.pad(vmap, (0, 0, 1, 1, 1, 1))
    w = layer.dwc.weight[:, 0]  # [C, 3, 3]
    conv = sum(padded[:, a:a + height, b:b + width, :] * w[:, a, b] for a in range(3) for b in range(3))
    conv = conv + layer.dwc.bias
    local = conv.reshape(2, height * width, heads, d).transpose(1, 2)
    assert_close(layer(x, size=(height, width)), explicit_out(layer, y + local))


def test_mediator_arguments():
    assert baselines.MediatorAttention(8, 2, mediators=16).grid == (4, 4)
    with pytest.raises(ValueError, match="perfect square"):
        baselines.MediatorAttention(8, 2, mediators=10)
    with pytest.raises(ValueError, match="pair of positive ints"):
        baselines.MediatorAttention(8, 2, mediators=(4, 0))
