"""Shared plumbing for the attention baselines: the diffusers-`Attention`-like call signature, the q/k/v/out
projections (named like diffusers' `to_q`, `to_k`, `to_v`, `to_out.0`, so an `attn1` state dict loads), head
splitting and the checks every baseline runs on its input.

Call signature of every baseline::

    out = layer(hidden_states, encoder_hidden_states=None, attention_mask=None, size=(H, W))

`hidden_states` is `[B, N, C]` with `N = H * W` tokens in row-major order. The spatial size comes from the `size=`
keyword or, when that is omitted, from the `spatial_size` attribute (set it once per resolution, the way the
diffusers integration records it from a hook). Methods that do not need it (SDPA, LinFusion) ignore it. These are
self-attention layers: `encoder_hidden_states` and `attention_mask` must be None.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def select_impl(requested: str | None, statuses: dict[str, Callable[[], str | None]],
                arg: str = "impl") -> tuple[str, dict[str, str]]:
    """The implementation to run: `requested`, or else the first usable one of `statuses` (in order; each maps a
    name to a check returning None when usable, else why not). Returns (name, {skipped name: reason}). Raises,
    naming `arg`, for an unknown name or a forced one that cannot run."""
    if requested is not None:
        if requested not in statuses:
            raise ValueError(f"{arg} must be one of {tuple(statuses)} or None, got {requested!r}")
        reason = statuses[requested]()
        if reason is not None:
            raise RuntimeError(f"{arg}={requested!r} was forced but {reason}")
        return requested, {}
    skipped = {}
    for name, status in statuses.items():
        reason = status()
        if reason is None:
            return name, skipped
        skipped[name] = reason
    raise RuntimeError(f"no {arg} can run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))


class AttentionBaseline(nn.Module):
    """Base class: projections, heads and input checks. Subclasses implement `_attend(q, k, v, x, size)` on
    `[B, heads, N, d]` tensors (x is the `[B, N, C]` input) returning `[B, heads, N, d]`."""

    needs_size = True

    def __init__(self, dim: int, heads: int = 8, qkv_bias: bool = True, out_bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or dim % heads:
            raise ValueError(f"heads must be a positive int dividing dim={dim}, got {heads!r}")
        self.dim = dim
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.spatial_size: tuple[int, int] | None = None
        factory = {"device": device, "dtype": dtype}
        self.to_q = nn.Linear(dim, dim, bias=qkv_bias, **factory)
        self.to_k = nn.Linear(dim, dim, bias=qkv_bias, **factory)
        self.to_v = nn.Linear(dim, dim, bias=qkv_bias, **factory)
        # A ModuleList like diffusers' [Linear, Dropout], so `to_out.0.weight` keys match an `attn1` state dict.
        self.to_out = nn.ModuleList([nn.Linear(dim, dim, bias=out_bias, **factory), nn.Dropout(0.0)])

    # -- input handling -------------------------------------------------------------------------------------
    def check_input(self, hidden_states, encoder_hidden_states, attention_mask, kwargs) -> None:
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected keyword arguments {sorted(kwargs)}")
        if encoder_hidden_states is not None:
            raise ValueError(f"{type(self).__name__} is a self-attention layer: encoder_hidden_states must be None")
        if attention_mask is not None:
            raise ValueError(f"{type(self).__name__} does not take an attention_mask (got one of shape "
                             f"{tuple(attention_mask.shape)}); it attends over all tokens of the map")
        if not isinstance(hidden_states, torch.Tensor):
            raise TypeError(f"hidden_states must be a torch.Tensor, got {type(hidden_states).__name__}")
        if hidden_states.dim() != 3:
            raise ValueError(f"hidden_states must be [B, N, C], got shape {tuple(hidden_states.shape)}")
        if hidden_states.shape[-1] != self.dim:
            raise ValueError(f"hidden_states has {hidden_states.shape[-1]} channels, expected dim={self.dim}")
        if not hidden_states.is_floating_point():
            raise TypeError(f"hidden_states must be floating point, got {hidden_states.dtype}")
        if hidden_states.dtype != self.to_q.weight.dtype:
            raise TypeError(f"hidden_states has dtype {hidden_states.dtype} but the layer's parameters are "
                            f"{self.to_q.weight.dtype}")

    def resolve_size(self, n: int, size) -> tuple[int, int] | None:
        """(H, W) from `size=` or the `spatial_size` attribute, checked against N; None if not needed."""
        size = size if size is not None else self.spatial_size
        if size is None:
            if self.needs_size:
                raise ValueError(f"{type(self).__name__} needs the spatial size: pass size=(H, W) or set "
                                 f".spatial_size (N={n} tokens)")
            return None
        if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
            raise ValueError(f"size must be a pair of positive ints (H, W), got {size!r}")
        if size[0] * size[1] != n:
            raise ValueError(f"size={tuple(size)} gives H*W={size[0] * size[1]} but hidden_states has N={n} tokens")
        return int(size[0]), int(size[1])

    # -- heads ----------------------------------------------------------------------------------------------
    def split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def merge_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, _, n, _ = t.shape
        return t.transpose(1, 2).reshape(b, n, self.dim)

    def project_qkv(self, x: torch.Tensor):
        return self.split_heads(self.to_q(x)), self.split_heads(self.to_k(x)), self.split_heads(self.to_v(x))

    def project_out(self, attended: torch.Tensor) -> torch.Tensor:
        return self.to_out[1](self.to_out[0](self.merge_heads(attended)))

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                size: tuple[int, int] | None = None, **kwargs) -> torch.Tensor:
        self.check_input(hidden_states, encoder_hidden_states, attention_mask, kwargs)
        hw = self.resolve_size(hidden_states.shape[1], size)
        q, k, v = self.project_qkv(hidden_states)
        return self.project_out(self._attend(q, k, v, hidden_states, hw))

    def _attend(self, q, k, v, x, size):  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}"
