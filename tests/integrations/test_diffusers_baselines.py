"""Attention baselines dropped into diffusers models: with the original weights carried over, the SDPA baseline
and a neighborhood window covering the whole map reproduce the unconverted model (so tokens, heads and sizes are
wired right); every method runs at a non-square size; bad calls fail clearly."""

import importlib.util

import pytest
import torch

pytest.importorskip("diffusers", reason="the diffusers integration needs the diffusers package")
pytest.importorskip("safetensors", reason="the diffusers integration needs the diffusers package")

from tiny_models import pixart_inputs, tiny_pixart, tiny_unet, unet_inputs  # noqa: E402

from deltaconv_kernels.baselines import DiTFastAttnSchedule  # noqa: E402
from deltaconv_kernels.integrations.diffusers import METHODS, BaselineAttention, convert, replace_attention  # noqa: E402
from deltaconv_kernels.testing import assert_close  # noqa: E402


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


# ---- DiTFastAttn in a generation loop -----------------------------------------------------------------------
needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason="diffusers pipelines import `transformers`")


def _ditfastattn_layers(model):
    return [m.layer for m in model.modules() if isinstance(m, BaselineAttention)]


@needs_transformers
@pytest.mark.parametrize("steps", [2, 7])
def test_ditfastattn_pipeline_runs_twice_and_is_sized_to_the_scheduler(steps):
    import numpy as np
    from tiny_models import tiny_pixart_pipeline

    pipe = tiny_pixart_pipeline()
    replace_attention(pipe, "ditfastattn")
    g = torch.Generator().manual_seed(0)
    emb, neg = torch.randn(1, 5, 32, generator=g), torch.randn(1, 5, 32, generator=g)
    kwargs = dict(prompt_embeds=emb, prompt_attention_mask=torch.ones(1, 5), negative_prompt=None,
                  negative_prompt_embeds=neg,
                  negative_prompt_attention_mask=torch.ones(1, 5), num_inference_steps=steps, height=32, width=32,
                  output_type="np", use_resolution_binning=False)
    first = pipe(**kwargs, generator=torch.Generator().manual_seed(1)).images
    layers = _ditfastattn_layers(pipe.transformer)
    assert all(layer.schedule.num_steps == steps and layer.step == steps for layer in layers)
    second = pipe(**kwargs, generator=torch.Generator().manual_seed(1)).images  # a fresh generation
    assert np.isfinite(first).all() and np.array_equal(first, second)
    assert all(layer.cond_half == "second" for layer in layers)  # PixArt's CFG batch is [uncond, cond]


def test_ditfastattn_bare_model_resets_when_the_timestep_rises():
    from tiny_models import tiny_dit

    model = tiny_dit()
    replace_attention(model, "ditfastattn", schedule=DiTFastAttnSchedule(["full", "window_residual"]))
    layers = _ditfastattn_layers(model)
    assert all(layer.cond_half == "first" for layer in layers)  # DiT's CFG batch is [cond, uncond]
    x = torch.randn(2, 4, 8, 8)
    labels = torch.tensor([1, 2])
    with torch.no_grad():
        outs = [model(x, timestep=torch.tensor([t, t]), class_labels=labels).sample for t in (900, 400, 900, 400)]
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[3])  # the plan restarted at t=900
