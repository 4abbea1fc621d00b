"""What every attention baseline layer shares: each dtype against fp64 on a non-contiguous input, and
the bad-input errors."""

from __future__ import annotations

import pytest
import torch
from explicit_attention import rand_x, randomize

from deltaconv_kernels import baselines
from deltaconv_kernels.testing import DTYPES, assert_close

LAYERS = {
    "sdpa": lambda: baselines.SDPASelfAttention(16, 2),
    "neighborhood": lambda: baselines.NeighborhoodAttention(16, 2, kernel_size=3, impl="reference"),
    "ditfastattn": lambda: baselines.DiTFastAttnAttention(16, 2, window=3),
    "linfusion": lambda: baselines.LinFusionAttention(16, 2),
    "mediator": lambda: baselines.MediatorAttention(16, 2, mediators=4),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_layers_in_each_dtype_match_fp64(gen, name, dtype):
    layer = randomize(LAYERS[name]().double(), gen).eval()
    big = rand_x(1, 7 * 5, 40, gen)
    x64 = big[..., 3:19]                                      # non-contiguous [B, N, C] view
    assert not x64.is_contiguous()
    expected = layer(x64, size=(7, 5))
    if name == "ditfastattn":
        layer.reset()
    low = layer.to(dtype)
    assert_close(low(x64.to(dtype), size=(7, 5)), expected, dtype=dtype)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_bad_input_errors(name):
    layer = LAYERS[name]()
    x = torch.randn(2, 12, 16)
    with pytest.raises(ValueError, match=r"\[B, N, C\]"):
        layer(torch.randn(12, 16), size=(3, 4))
    with pytest.raises(ValueError, match="expected dim=16"):
        layer(torch.randn(2, 12, 15), size=(3, 4))
    with pytest.raises(ValueError, match="N=12 tokens"):
        layer(x, size=(5, 3))
    with pytest.raises(ValueError, match="encoder_hidden_states must be None"):
        layer(x, torch.randn(2, 4, 16), size=(3, 4))
    with pytest.raises(ValueError, match="attention_mask"):
        layer(x, attention_mask=torch.ones(2, 12, dtype=torch.bool), size=(3, 4))
    with pytest.raises(TypeError, match="dtype torch.float64"):
        layer(x.double(), size=(3, 4))
    with pytest.raises(TypeError, match="unexpected keyword"):
        layer(x, size=(3, 4), scale=1.0)
    if layer.needs_size:
        with pytest.raises(ValueError, match="needs the spatial size"):
            layer(x)
    with pytest.raises(ValueError, match="heads must be a positive int dividing dim"):
        type(layer)(16, 3)
