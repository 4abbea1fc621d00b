"""Neighborhood attention (NATTEN's window definition): the tiled reference and the layer against
an explicit mask, and its errors."""

from __future__ import annotations

import pytest
import torch
from explicit_attention import F64, explicit_out, explicit_qkv, make, masked_attention, neighborhood_mask, rand_x
from hypothesis import given, settings
from hypothesis import strategies as st

from deltaconv_kernels import baselines
from deltaconv_kernels.testing import assert_close


@pytest.mark.parametrize("size,k", [((5, 7), 7), ((6, 6), 9), ((1, 9), 11)])
def test_neighborhood_window_covering_map_equals_full_attention(gen, size, k):
    na = make(baselines.NeighborhoodAttention, 16, 2, gen, kernel_size=k, impl="reference")
    full = baselines.SDPASelfAttention(16, 2, dtype=F64)
    full.load_state_dict(na.state_dict(), strict=True)
    x = rand_x(2, size[0] * size[1], 16, gen)
    assert_close(na(x, size=size), full(x))


@settings(max_examples=12, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), k=st.sampled_from([1, 3, 5, 7]), heads=st.sampled_from([1, 2]),
       tile=st.sampled_from([None, 2, 3]), seed=st.integers(0, 2**16))
def test_neighborhood_reference_matches_explicit_mask(h, w, k, heads, tile, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k_, v = (torch.randn(2, heads, h * w, 4, generator=gen, dtype=F64) for _ in range(3))
    out = baselines.neighborhood_attention(q, k_, v, (h, w), k, tile=tile, chunk_bytes=1)  # 1 band per chunk
    assert_close(out, masked_attention(q, k_, v, neighborhood_mask(h, w, k)))


def test_neighborhood_layer_matches_explicit_and_spatial_size_attribute(gen):
    layer = make(baselines.NeighborhoodAttention, 12, 3, gen, kernel_size=3, impl="reference")
    x = rand_x(1, 13 * 9, 12, gen)
    q, k, v = explicit_qkv(layer, x)
    expected = explicit_out(layer, masked_attention(q, k, v, neighborhood_mask(13, 9, 3)))
    assert_close(layer(x, size=(13, 9)), expected)
    layer.spatial_size = (13, 9)
    assert_close(layer(x), expected)


def test_neighborhood_natten_forced_without_natten_says_why():
    reason = baselines.natten_status()
    if reason is None:
        pytest.skip("NATTEN is installed here; the missing-NATTEN error cannot be exercised")
    with pytest.raises(RuntimeError, match="NATTEN is not installed"):
        baselines.NeighborhoodAttention(8, 2, kernel_size=3, impl="natten")


def test_neighborhood_kernel_size_must_be_odd():
    with pytest.raises(ValueError, match="positive odd int"):
        baselines.NeighborhoodAttention(8, 2, kernel_size=4)
