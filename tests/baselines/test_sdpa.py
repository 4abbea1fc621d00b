"""The SDPA self-attention baseline against explicit attention."""

from __future__ import annotations

from explicit_attention import explicit_out, explicit_qkv, make, masked_attention, rand_x

from deltaconv_kernels import baselines
from deltaconv_kernels.testing import assert_close


def test_sdpa_matches_explicit_attention(gen):
    layer = make(baselines.SDPASelfAttention, 24, 3, gen)
    x = rand_x(2, 35, 24, gen)
    q, k, v = explicit_qkv(layer, x)
    assert_close(layer(x), explicit_out(layer, masked_attention(q, k, v)))
