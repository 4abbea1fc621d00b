"""Full softmax self-attention: q/k/v projections, `F.scaled_dot_product_attention`, out projection."""

from __future__ import annotations

import torch.nn.functional as F

from deltaconv_kernels.baselines.base import AttentionBaseline


class SDPASelfAttention(AttentionBaseline):
    """The layer ΔConvBlock replaces (diffusers `attn1` with the SDPA processor). `size` is accepted and
    checked against N when given, but not needed."""

    needs_size = False

    def _attend(self, q, k, v, x, size):
        return F.scaled_dot_product_attention(q, k, v)
