"""Tiny diffusers models and pipelines built from configs (random weights, no downloads), and the full-size
configs of the released base models for meta-device tests. Other test files import these: keep signatures stable.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from deltaconv_kernels.bench.denoisers import FULL_CONFIGS

# Full-size denoiser configs (architecture entries of the public model cards' config.json); SD1.5's and PixArt-Σ's
# are the ones the end-to-end benchmark builds.
_FULL_CONFIGS = {
    "sd15": FULL_CONFIGS["sd15"],
    "sdxl": dict(
        _class_name="UNet2DConditionModel", sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, norm_num_groups=32,
        flip_sin_to_cos=True, freq_shift=0),
    "pixart_sigma": FULL_CONFIGS["pixart"],
    "pixart_alpha": dict(
        _class_name="PixArtTransformer2DModel", sample_size=128, in_channels=4, out_channels=8, num_layers=28,
        num_attention_heads=16, attention_head_dim=72, cross_attention_dim=1152, caption_channels=4096,
        patch_size=2, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        num_embeds_ada_norm=1000, attention_bias=True, activation_fn="gelu-approximate"),
    "dit": dict(
        _class_name="DiTTransformer2DModel", sample_size=32, in_channels=4, out_channels=8, num_layers=28,
        num_attention_heads=16, attention_head_dim=72, patch_size=2, num_embeds_ada_norm=1000),
}


def full_config(name: str) -> dict:
    """Config dict of a released base model: "sd15", "sdxl", "pixart_sigma", "pixart_alpha" or "dit"."""
    if name not in _FULL_CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose from {sorted(_FULL_CONFIGS)}")
    return copy.deepcopy(_FULL_CONFIGS[name])


def _model_class(name: str):
    import diffusers
    return getattr(diffusers, name)


def meta_model(name: str):
    """The full-size model of `full_config(name)` on the meta device (no memory, no weights)."""
    from accelerate import init_empty_weights
    cfg = full_config(name)
    cls = _model_class(cfg.pop("_class_name"))
    with init_empty_weights():
        return cls(**cfg)


def tiny_unet(layout: str = "sd15", cross_attention_dim: int = 32, seed: int = 0, dtype=torch.float32):
    """A small UNet2DConditionModel with the level layout of SD1.5 (4 levels, attention at 0-2) or SDXL
    (3 levels, attention at 1-2, transformer_layers_per_block (1, 2, 2), linear projections)."""
    from diffusers import UNet2DConditionModel
    torch.manual_seed(seed)
    if layout == "sd15":
        cfg = dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, attention_head_dim=2,
                   down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                   up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    elif layout == "sdxl":
        cfg = dict(block_out_channels=(8, 16, 16), layers_per_block=1, attention_head_dim=(1, 2, 2),
                   down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                   transformer_layers_per_block=(1, 2, 2), use_linear_projection=True)
    else:
        raise ValueError(f"layout must be 'sd15' or 'sdxl', got {layout!r}")
    model = UNet2DConditionModel(sample_size=32, in_channels=4, out_channels=4, norm_num_groups=4,
                                 cross_attention_dim=cross_attention_dim, **cfg)
    return (model if dtype == torch.float32 else model.to(dtype)).eval()


def tiny_pixart(variant: str = "sigma", seed: int = 0, dtype=torch.float32):
    """A 2-layer PixArtTransformer2DModel (inner dim 16, patch 2, learned sigma). "sigma" and "alpha" share the
    architecture in diffusers; alpha differs only by its interpolation scale default."""
    from diffusers import PixArtTransformer2DModel
    if variant not in ("sigma", "alpha"):
        raise ValueError(f"variant must be 'sigma' or 'alpha', got {variant!r}")
    torch.manual_seed(seed)
    model = PixArtTransformer2DModel(
        sample_size=16, in_channels=4, out_channels=8, num_layers=2, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, caption_channels=32, patch_size=2, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, num_embeds_ada_norm=1000, attention_bias=True,
        activation_fn="gelu-approximate", use_additional_conditions=False,
        interpolation_scale=2 if variant == "sigma" else None)
    return (model if dtype == torch.float32 else model.to(dtype)).eval()


def tiny_dit(seed: int = 0, dtype=torch.float32):
    from diffusers import DiTTransformer2DModel
    torch.manual_seed(seed)
    model = DiTTransformer2DModel(sample_size=8, in_channels=4, out_channels=8, num_layers=2,
                                  num_attention_heads=2, attention_head_dim=8, patch_size=2, num_embeds_ada_norm=10)
    return (model if dtype == torch.float32 else model.to(dtype)).eval()


def tiny_vae(seed: int = 0):
    """AutoencoderKL with 2 levels: latents are image/2 with 4 channels."""
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=4, sample_size=16).eval()


def tiny_sd_pipeline(layout: str = "sd15"):
    """(Needs `transformers`: diffusers' pipeline modules import it.) StableDiffusionPipeline with a tiny U-Net
    and VAE, no tokenizer / text encoder / safety checker: call it
    with `prompt_embeds` [B, T, 32] (and `negative_prompt_embeds` when guidance_scale > 1)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=None, tokenizer=None, unet=tiny_unet(layout),
                                   scheduler=DDIMScheduler(clip_sample=False), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pixart_pipeline(variant: str = "sigma"):
    """(Needs `transformers`.) PixArtSigmaPipeline / PixArtAlphaPipeline with a tiny transformer and VAE and no
    text encoder: call it with
    `prompt_embeds` [B, T, 32], `prompt_attention_mask` and the negative pair, `use_resolution_binning=False`."""
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline
    cls = PixArtSigmaPipeline if variant == "sigma" else PixArtAlphaPipeline
    pipe = cls(tokenizer=None, text_encoder=None, vae=tiny_vae(), transformer=tiny_pixart(variant),
               scheduler=DPMSolverMultistepScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_dit_pipeline():
    """DiTPipeline with the tiny DiT (10 classes: call it with class labels < 10 and guidance_scale=1, since
    classifier-free guidance uses the null class 1000) and the tiny VAE."""
    from diffusers import DDIMScheduler, DiTPipeline
    pipe = DiTPipeline(transformer=tiny_dit(), vae=tiny_vae(), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unet_inputs(model, batch: int = 2, height: int = 16, width: int = 12, tokens: int = 5, seed: int = 0):
    """(sample, timestep, encoder_hidden_states) for a tiny U-Net in the model's dtype."""
    g = torch.Generator().manual_seed(seed)
    dtype = model.dtype
    sample = torch.randn(batch, model.config.in_channels, height, width, generator=g).to(dtype)
    ctx = torch.randn(batch, tokens, model.config.cross_attention_dim, generator=g).to(dtype)
    return sample, torch.tensor(10), ctx


def pixart_inputs(model, batch: int = 2, height: int = 16, width: int = 12, tokens: int = 5, seed: int = 0):
    """Keyword inputs for a tiny PixArt transformer."""
    g = torch.Generator().manual_seed(seed)
    dtype = model.dtype
    return dict(hidden_states=torch.randn(batch, model.config.in_channels, height, width, generator=g).to(dtype),
                encoder_hidden_states=torch.randn(batch, tokens, model.config.caption_channels, generator=g).to(dtype),
                timestep=torch.tensor([10] * batch), added_cond_kwargs={"resolution": None, "aspect_ratio": None})


def cfg_denoise_unet(unet, vae, cond, uncond, height: int, width: int, steps: int = 2, guidance: float = 5.0,
                     seed: int = 0):
    """The text-to-image loop of StableDiffusionPipeline (CFG batch of 2B, DDIM, VAE decode) without the pipeline
    class, which needs `transformers`. Returns images [B, 3, height, width] in [-1, 1]."""
    from diffusers import DDIMScheduler
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(steps)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(cond.shape[0], unet.config.in_channels, height // factor, width // factor, generator=g)
    latents = latents.to(unet.dtype) * scheduler.init_noise_sigma
    context = torch.cat([uncond, cond])
    with torch.no_grad():
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            noise_uncond, noise_cond = unet(model_in, t, encoder_hidden_states=context).sample.chunk(2)
            noise = noise_uncond + guidance * (noise_cond - noise_uncond)
            latents = scheduler.step(noise, t, latents).prev_sample
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample


def tiny_clip_text(folder):
    """A CLIP tokenizer (a character vocabulary written to `folder`, no BPE merges) and a 2-layer CLIPTextModel with
    32-wide states: what a StableDiffusionPipeline needs to take a text prompt, built offline."""
    import json
    import string

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + ",.!?'-"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    torch.manual_seed(0)
    encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
                                           num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                           bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    return tokenizer, encoder


def tiny_sd_pipeline_with_text(folder):
    """A tiny StableDiffusionPipeline that takes text prompts (tiny_clip_text), saved to `folder` with
    save_pretrained as a Hub snapshot would hold it; returns the folder."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    tokenizer, encoder = tiny_clip_text(Path(folder) / "_tokenizer_files")
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=encoder, tokenizer=tokenizer, unet=tiny_unet("sd15"),
                                   scheduler=DDIMScheduler(clip_sample=False, steps_offset=1), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return str(folder)
