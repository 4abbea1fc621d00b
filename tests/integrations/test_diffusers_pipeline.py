"""A converted model works inside the generation loop end to end: diffusers' StableDiffusionPipeline and
PixArt pipelines (need `transformers`, which diffusers' pipeline modules import), and the same CFG loop written
out (always runs), plus the example script."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers", reason="the diffusers integration needs the diffusers package")

from tiny_models import cfg_denoise_unet, tiny_pixart_pipeline, tiny_sd_pipeline, tiny_unet, tiny_vae  # noqa: E402

from deltaconv_kernels.integrations import diffusers as dd  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
needs_transformers = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="diffusers pipelines import `transformers`, "
                                        "which is not installed (pip install transformers)")


@pytest.mark.parametrize("hw", [(40, 24), (26, 34)])
def test_cfg_loop_with_converted_unet(hw):
    unet, vae = tiny_unet("sd15"), tiny_vae()
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 5, 32, generator=g), torch.randn(2, 5, 32, generator=g)
    before = cfg_denoise_unet(unet, vae, cond, uncond, *hw)
    dd.convert(unet)
    after = cfg_denoise_unet(unet, vae, cond, uncond, *hw)
    assert after.shape == before.shape == (2, 3, *hw) and torch.isfinite(after).all()
    assert not torch.equal(after, before)  # the ΔConvBlocks really ran


@needs_transformers
def test_stable_diffusion_pipeline_end_to_end(tmp_path):
    pipe = tiny_sd_pipeline("sd15")
    g = torch.Generator().manual_seed(0)
    kwargs = dict(prompt_embeds=torch.randn(1, 5, 32, generator=g), negative_prompt_embeds=torch.randn(1, 5, 32),
                  num_inference_steps=2, height=40, width=24, output_type="np")
    before = pipe(**kwargs, generator=torch.Generator().manual_seed(1)).images
    report = dd.convert(pipe)
    assert len(report) == 10
    after = pipe(**kwargs, generator=torch.Generator().manual_seed(1)).images
    assert after.shape == before.shape == (1, 40, 24, 3) and np.isfinite(after).all()
    dd.save(pipe, tmp_path)
    fresh = tiny_sd_pipeline("sd15")
    dd.load(fresh, tmp_path)
    again = fresh(**kwargs, generator=torch.Generator().manual_seed(1)).images
    assert np.array_equal(again, after)


@needs_transformers
@pytest.mark.parametrize("variant", ["sigma", "alpha"])
def test_pixart_pipeline_end_to_end(variant):
    pipe = tiny_pixart_pipeline(variant)
    mask = torch.ones(1, 5)
    kwargs = dict(prompt_embeds=torch.randn(1, 5, 32), prompt_attention_mask=mask, negative_prompt=None,
                  negative_prompt_embeds=torch.randn(1, 5, 32), negative_prompt_attention_mask=mask,
                  num_inference_steps=2, height=40, width=24, output_type="np", use_resolution_binning=False)
    before = pipe(**kwargs).images
    report = dd.convert(pipe)
    assert len(report) == 2 and {r.kernel_size for r in report} == {13}
    after = pipe(**kwargs).images
    assert after.shape == before.shape == (1, 40, 24, 3) and np.isfinite(after).all()


def _example():
    spec = importlib.util.spec_from_file_location("convert_pipeline", ROOT / "python/examples/convert_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _example().parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--model" in out and "--kernel-size" in out and "--deltaconv-weights" in out


@needs_transformers
def test_example_runs_tiny_pipeline(tmp_path, capsys):
    argv = ["--tiny", "pixart", "--height", "32", "--width", "24", "--out", str(tmp_path / "a.png")]
    assert _example().main(argv) == 0
    assert (tmp_path / "a.png").is_file() and "transformer_blocks.1.attn1" in capsys.readouterr().out
