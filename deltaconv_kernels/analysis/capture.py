"""Capture self-attention maps of `BasicTransformerBlock.attn1` in diffusers models, memory-bounded.

For each layer a fixed sample of query positions is drawn once per map size (seeded, so every timestep looks at
the same queries); during the model's forward a hook on `attn1` recomputes softmax(q k^T * scale) for those queries
only, a chunk of heads (and queries) at a time, and hands each chunk to a consumer. The hook reads the layer's input
and returns nothing, so the model's output is untouched. The map size (H, W) of a layer is not visible to `attn1`
(it sees `[B, N, C]`); a forward pre-hook on the module that still sees the 4-D latent records it (docs/DESIGN.md §5):
`Transformer2DModel` in U-Nets, the model itself for PixArt and DiT (latent H / patch, W / patch).

Layer names are the module paths of the `attn1` modules relative to the denoiser (e.g.
`down_blocks.0.attentions.0.transformer_blocks.0.attn1`, `transformer_blocks.3.attn1`): the names the diffusers
integration's `convert(model, kernel_sizes={name: K})` takes and reports.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from diffusers.models.attention import BasicTransformerBlock
from torch import nn

import deltaconv_kernels.integrations.diffusers.sites as dm
from deltaconv_kernels.integrations.diffusers.attention import RecordSize, SpatialSize

# Attention scores per chunk. Measuring a chunk (float64 integral image and FFT) peaks near 40 bytes per score
# on top of the 4-byte scores, so 2^23 scores stay under ~400 MiB.
DEFAULT_MAX_ELEMENTS = 1 << 23


class CapturedMaps(NamedTuple):
    layer: str               # module path of attn1
    step: object             # the caller's tag for this forward (e.g. the timestep)
    hw: tuple[int, int]      # (H, W) of the layer's token map
    qy: torch.Tensor         # [S] query rows
    qx: torch.Tensor         # [S] query cols
    maps: torch.Tensor       # [B, heads in chunk, S, H, W] float32 softmax rows (each sums to 1)
    head_offset: int         # index of the chunk's first head
    num_heads: int           # heads of the layer


def self_attention_layers(model: nn.Module) -> dict[str, BasicTransformerBlock]:
    """Every `BasicTransformerBlock` of the model whose `attn1` is a self-attention, by the path of its attn1, in
    forward order: the sites `convert` replaces (`sites.find_sites`, the one implementation)."""
    return {site.name: site.block for site in _sites(model)}


def attention_of(block: nn.Module) -> nn.Module:
    """The module that computes a site's self-attention: `attn1`, or the original attention a converted layer
    kept (`convert(..., keep_attention=True)`), whose forwards run in the "teacher" and "distill" modes."""
    kept = getattr(block.attn1, "attention", None)
    return kept if isinstance(kept, nn.Module) else block.attn1


def _sites(model: nn.Module):
    if type(model).__name__ not in dm.SUPPORTED:
        raise ValueError(f"{type(model).__name__} has no BasicTransformerBlock with self-attention attn1 that the "
                         f"analysis knows: supported are {', '.join(dm.SUPPORTED)}")
    return dm.find_sites(model)


def query_sample(h: int, w: int, num_queries: int, seed: int, layer: str,
                 must_include: Sequence[tuple[int, int]] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed sample of min(num_queries, H*W) query positions: `must_include` first, then uniformly drawn distinct
    positions. Seeded by (seed, layer name, H, W) so the sample does not depend on hook order."""
    n = h * w
    if num_queries < 1:
        raise ValueError(f"num_queries must be >= 1, got {num_queries}")
    chosen = list(dict.fromkeys(y * w + x for y, x in must_include))[:num_queries]
    if any(not 0 <= i < n for i in chosen):
        raise ValueError(f"must_include positions must lie inside the {h} x {w} map, got {list(must_include)}")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(f"{layer}:{h}x{w}".encode()))
    taken = set(chosen)
    for i in torch.randperm(n, generator=gen).tolist():
        if len(chosen) >= min(num_queries, n):
            break
        if i not in taken:
            chosen.append(i)
    index = torch.tensor(chosen, dtype=torch.long)
    return index // w, index % w


def attention_logits_inputs(attn: nn.Module, hidden_states: torch.Tensor, query_index: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head queries for the sampled tokens and keys for all tokens, as the attention processor forms them:
    q [B, heads, S, d], k [B, heads, N, d] (with `norm_q`/`norm_k` applied when the layer has them)."""
    if getattr(attn, "group_norm", None) is not None or getattr(attn, "spatial_norm", None) is not None:
        raise ValueError("attn1 with group_norm or spatial_norm is not a BasicTransformerBlock self-attention; "
                         "the analysis does not support it")
    if hidden_states.dim() != 3:
        raise ValueError(f"attn1 input must be [B, N, C], got shape {tuple(hidden_states.shape)}")
    b, n, _ = hidden_states.shape
    q = attn.to_q(hidden_states[:, query_index.to(hidden_states.device)])
    k = attn.to_k(hidden_states)
    heads = attn.heads
    head_dim = k.shape[-1] // heads
    q = q.view(b, -1, heads, head_dim).transpose(1, 2)
    k = k.view(b, n, heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    return q, k


def chunked_attention_maps(q: torch.Tensor, k: torch.Tensor, scale: float, max_elements: int):
    """Yield (head_offset, query_offset, probs [B, hc, sc, N] float32) chunk by chunk, each chunk holding at most
    max(max_elements, B * N) scores: softmax(q k^T * scale) over the keys, in float32."""
    b, heads, s, _ = q.shape
    n = k.shape[2]
    per_query = b * n
    queries = max(1, min(s, max_elements // per_query))
    heads_per_chunk = max(1, min(heads, max_elements // (per_query * queries))) if queries == s else 1
    for h0 in range(0, heads, heads_per_chunk):
        kh = k[:, h0:h0 + heads_per_chunk].float()
        for s0 in range(0, s, queries):
            qh = q[:, h0:h0 + heads_per_chunk, s0:s0 + queries].float()
            yield h0, s0, torch.softmax(qh @ kh.transpose(-1, -2) * scale, dim=-1)


class AttentionCapture:
    """Context manager: while active, every forward of the model sends the sampled attention maps of each layer to
    `consumer(CapturedMaps)`. Set `.step` before a forward to tag its maps (e.g. with the timestep).

    `layers`: names to capture (default: all self-attention layers). `must_include(h, w)` returns query positions
    that every sample of an h x w layer contains (e.g. the ones to plot). `max_elements` bounds the scores held
    at once."""

    def __init__(self, model: nn.Module, consumer: Callable[[CapturedMaps], None], num_queries: int = 64,
                 seed: int = 0, layers: Sequence[str] | None = None,
                 must_include: Callable[[int, int], Sequence[tuple[int, int]]] | None = None,
                 max_elements: int = DEFAULT_MAX_ELEMENTS):
        sites = {site.name: site for site in _sites(model)}
        all_layers = {name: site.block for name, site in sites.items()}
        if layers is None:
            layers = list(all_layers)
        unknown = [name for name in layers if name not in all_layers]
        if unknown:
            raise ValueError(f"layers {unknown} are not self-attention BasicTransformerBlocks of the model; "
                             f"known: {list(all_layers)}")
        if max_elements < 1:
            raise ValueError(f"max_elements must be >= 1, got {max_elements}")
        for name in layers:
            attn = attention_of(all_layers[name])
            if not all(hasattr(attn, a) for a in ("to_q", "to_k", "heads", "scale")):
                raise ValueError(f"{name} is a {type(attn).__name__}, not a diffusers Attention (is the model already "
                                 "converted to ΔConvBlocks without keep_attention?): there is no attention map to "
                                 "capture")
        self.model, self.consumer = model, consumer
        self.layers = {name: all_layers[name] for name in layers}
        # one SpatialSize per owner (the module that sees the 4-D map), recorded by the integrations' hook
        self.sites = {name: sites[name] for name in self.layers}
        self._sizes = {site.owner_name: SpatialSize(site.owner_name) for site in self.sites.values()}
        self.num_queries, self.seed, self.max_elements = num_queries, seed, max_elements
        self.must_include = must_include or (lambda h, w: ())
        self.step: object = None
        self.samples: dict[tuple[str, int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list = []

    def __enter__(self) -> AttentionCapture:
        owners = {site.owner_name: site for site in self.sites.values()}
        for owner_name, site in owners.items():
            hook = RecordSize(self._sizes[owner_name], site.patch)
            self._handles.append(site.owner.register_forward_pre_hook(hook, with_kwargs=True))
        for name, block in self.layers.items():
            self._handles.append(attention_of(block).register_forward_hook(self._attention_hook(name),
                                                                            with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _attention_hook(self, name: str):
        size = self._sizes[self.sites[name].owner_name]

        def hook(attn, args, kwargs, output):
            if kwargs.get("encoder_hidden_states") is not None:
                raise ValueError(f"attn1 of {name} got encoder_hidden_states: it is not a self-attention")
            if kwargs.get("attention_mask") is not None:
                raise ValueError(f"attn1 of {name} got an attention_mask; masked self-attention is not supported "
                                 "by the analysis")
            x = args[0] if args else kwargs["hidden_states"]
            h, w = size.get(x.shape[1], name)
            key = (name, h, w)
            if key not in self.samples:
                self.samples[key] = query_sample(h, w, self.num_queries, self.seed, name, self.must_include(h, w))
            qy, qx = self.samples[key]
            with torch.no_grad():
                q, k = attention_logits_inputs(attn, x, qy * w + qx)
                for h0, s0, probs in chunked_attention_maps(q, k, attn.scale, self.max_elements):
                    sl = slice(s0, s0 + probs.shape[2])
                    self.consumer(CapturedMaps(name, self.step, (h, w), qy[sl], qx[sl],
                                               probs.unflatten(-1, (h, w)), h0, q.shape[1]))
        return hook
