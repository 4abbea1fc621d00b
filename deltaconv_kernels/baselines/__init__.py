"""Attention baselines ΔConvBlock is compared against (docs/DESIGN.md §7). Each takes `[B, N, C]` hidden states with the
diffusers `Attention` call signature plus the spatial size; see `base.AttentionBaseline`. Imports from the package
only torch-free modules: `ditfastattn_schedule` (DiTFastAttn's plan) and `window_blocks` (the windowed
implementations' geometry, which flops.py counts too)."""

from deltaconv_kernels.baselines.base import AttentionBaseline
from deltaconv_kernels.baselines.ditfastattn import DiTFastAttnAttention, DiTFastAttnSchedule, window_attention_1d
from deltaconv_kernels.baselines.flex import flex_status
from deltaconv_kernels.baselines.linfusion import LinFusionAttention, generalized_linear_attention
from deltaconv_kernels.baselines.mediator import MediatorAttention, mediator_attention
from deltaconv_kernels.baselines.neighborhood import (
    NeighborhoodAttention,
    natten_status,
    neighborhood_attention,
    neighborhood_attention_flex,
)
from deltaconv_kernels.baselines.sdpa import SDPASelfAttention

__all__ = [
    "AttentionBaseline", "DiTFastAttnAttention", "DiTFastAttnSchedule", "LinFusionAttention", "MediatorAttention",
    "NeighborhoodAttention", "SDPASelfAttention", "flex_status", "generalized_linear_attention", "mediator_attention",
    "natten_status", "neighborhood_attention", "neighborhood_attention_flex", "window_attention_1d",
]
