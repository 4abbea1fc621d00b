"""The LinFusion-style generalized linear attention against its explicit quadratic form."""

from __future__ import annotations

import torch.nn.functional as F
from explicit_attention import explicit_out, make, rand_x

from deltaconv_kernels import baselines
from deltaconv_kernels.testing import assert_close


def test_linfusion_matches_explicit_quadratic_form(gen):
    layer = make(baselines.LinFusionAttention, 20, 4, gen)
    x = rand_x(2, 33, 20, gen)
    b, n, c = x.shape
    split = lambda t: t.view(b, n, 4, 5).transpose(1, 2)  # noqa: E731
    q = split(layer.to_q(x + layer.phi_q(x)))
    k = split(layer.to_k(x + layer.phi_k(x)))
    v = split(layer.to_v(x))
    qp, kp = F.elu(q) + 1, F.elu(k) + 1
    a = qp @ kp.transpose(-1, -2)                               # [B, h, N, N], the O(N^2) form
    y = (a @ v / n) / (a.mean(-1, keepdim=True) + 1e-4)
    assert_close(layer(x), explicit_out(layer, y))
    # phi is Linear -> LayerNorm -> LeakyReLU -> Linear
    assert [type(m).__name__ for m in layer.phi_q] == ["Linear", "LayerNorm", "LeakyReLU", "Linear"]
