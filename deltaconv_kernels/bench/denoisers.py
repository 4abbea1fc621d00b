"""The denoiser architectures the end-to-end benchmark builds: the public checkpoints' configs and small variants of
the same classes. Plain data (no diffusers import), so tests and tools can read them anywhere."""

from __future__ import annotations

# Denoiser configs of the public checkpoints (the architecture entries of their config.json):
# PixArt-alpha/PixArt-Sigma-XL-2-1024-MS transformer/ and runwayml/stable-diffusion-v1-5 unet/.
FULL_CONFIGS = {
    "pixart": dict(
        _class_name="PixArtTransformer2DModel", sample_size=128, in_channels=4, out_channels=8, num_layers=28,
        num_attention_heads=16, attention_head_dim=72, cross_attention_dim=1152, caption_channels=4096,
        patch_size=2, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        num_embeds_ada_norm=1000, attention_bias=True, activation_fn="gelu-approximate", interpolation_scale=2,
        use_additional_conditions=False, dropout=0.0, norm_num_groups=32, upcast_attention=False,
        attention_type="default"),
    "sd15": dict(
        _class_name="UNet2DConditionModel", sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=32, norm_eps=1e-5, act_fn="silu", center_input_sample=False, downsample_padding=1,
        mid_block_scale_factor=1, flip_sin_to_cos=True, freq_shift=0),
}
# The same classes and layouts, small: for testing the code path, not for measuring.
TINY_CONFIGS = {
    "pixart": {**FULL_CONFIGS["pixart"], "num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 8,
               "cross_attention_dim": 16, "caption_channels": 32, "sample_size": 16},
    "sd15": {**FULL_CONFIGS["sd15"], "block_out_channels": (8, 16, 16, 16), "layers_per_block": 1,
             "attention_head_dim": 2, "cross_attention_dim": 32, "norm_num_groups": 4, "sample_size": 32},
}
