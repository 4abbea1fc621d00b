"""Attention baselines ΔConvBlock is compared against (DESIGN §7). Each takes `[B, N, C]` hidden states with the
diffusers `Attention` call signature plus the spatial size; see `base.AttentionBaseline`. Stands on its own:
imports nothing else from the package."""

from deltaconv_kernels.baselines.base import AttentionBaseline
from deltaconv_kernels.baselines.ditfastattn import DiTFastAttnAttention, DiTFastAttnSchedule, window_attention_1d
from deltaconv_kernels.baselines.linfusion import LinFusionAttention, generalized_linear_attention
from deltaconv_kernels.baselines.mediator import MediatorAttention, mediator_attention
from deltaconv_kernels.baselines.neighborhood import NeighborhoodAttention, natten_status, neighborhood_attention
from deltaconv_kernels.baselines.sdpa import SDPASelfAttention

__all__ = [
    "AttentionBaseline", "DiTFastAttnAttention", "DiTFastAttnSchedule", "LinFusionAttention", "MediatorAttention",
    "NeighborhoodAttention", "SDPASelfAttention", "generalized_linear_attention", "mediator_attention",
    "natten_status", "neighborhood_attention", "window_attention_1d",
]
