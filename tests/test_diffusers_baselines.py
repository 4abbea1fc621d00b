"""Attention baselines dropped into diffusers models: with the original weights carried over, the SDPA baseline
and a neighborhood window covering the whole map reproduce the unconverted model (so tokens, heads and sizes are
wired right); every method runs at a non-square size; bad calls fail clearly."""

import pytest
import torch
from tiny_models import pixart_inputs, tiny_pixart, tiny_unet, unet_inputs

from deltaconv_kernels.integrations.diffusers import METHODS, BaselineAttention, convert, replace_attention
from deltaconv_kernels.testing import assert_close


def _unet_out(model, inputs):
    with torch.no_grad():
        return model(*inputs).sample


@pytest.mark.parametrize("method,kwargs", [("sdpa", {}), ("neighborhood", {"kernel_size": 31})])
def test_exact_baselines_reproduce_the_unet(method, kwargs):
    base = tiny_unet("sd15", seed=3)
    inputs = unet_inputs(base, height=16, width=12)
    expected = _unet_out(base, inputs)
    names = replace_attention(base, method, **kwargs)
    assert names and all(isinstance(base.get_submodule(n), BaselineAttention) for n in names)
    assert all(type(m).__name__ != "Attention" or m.is_cross_attention for n, m in base.named_modules()
               if n.endswith(".attn1"))
    assert_close(_unet_out(base, inputs), expected, torch.float32, f"{method} U-Net output")


def test_sdpa_baseline_reproduces_pixart():
    model = tiny_pixart(seed=1)
    inputs = pixart_inputs(model, height=16, width=12)
    with torch.no_grad():
        expected = model(**inputs).sample
        replace_attention(model, "sdpa")
        assert_close(model(**inputs).sample, expected, torch.float32, "sdpa PixArt output")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_at_a_non_square_size(method):
    model = tiny_unet("sd15", seed=0)
    inputs = unet_inputs(model, height=24, width=16)
    shape = _unet_out(model, inputs).shape
    replace_attention(model, method)
    out = _unet_out(model, inputs)
    assert out.shape == shape and torch.isfinite(out).all()


def test_errors():
    model = tiny_unet("sd15")
    with pytest.raises(ValueError, match="method must be one of"):
        replace_attention(model, "flash")
    convert(model)
    with pytest.raises(ValueError, match="already has its self-attention replaced"):
        replace_attention(model, "sdpa")
