"""Tiny randomly initialised diffusers models for `deltaconv analyze --tiny` (demos and tests; no weights are
downloaded). Random weights give nearly uniform attention, so their ERFs are large: the numbers demonstrate the
tool, not a trained model."""

from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel, UNet2DConditionModel

TINY_MODELS = ("unet", "pixart", "dit")


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    """SD-style U-Net: attention at 8x8 (down 0, up 1) and 4x4 (down 1, mid, up 0) for a 64 px (8x8 latent) input."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8).eval()


def tiny_pixart(seed: int = 0) -> PixArtTransformer2DModel:
    """PixArt-style DiT with two blocks, patch 2: a 16x16 latent gives 8x8 attention maps."""
    torch.manual_seed(seed)
    return PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=32, caption_channels=32, sample_size=16, patch_size=2, norm_num_groups=8).eval()


def tiny_dit(seed: int = 0) -> DiTTransformer2DModel:
    """DiT (class-conditional) with two blocks, patch 2: a 16x16 latent gives 8x8 attention maps."""
    torch.manual_seed(seed)
    return DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
        sample_size=16, patch_size=2, norm_num_groups=8, num_embeds_ada_norm=10).eval()


def tiny_model(kind: str, seed: int = 0):
    builders = {"unet": tiny_unet, "pixart": tiny_pixart, "dit": tiny_dit}
    if kind not in builders:
        raise ValueError(f"tiny model must be one of {TINY_MODELS}, got {kind!r}")
    return builders[kind](seed)
