"""Neighborhood attention (Hassani et al.): each query attends to the K x K window around it, the window
shifted inward at the borders so it always holds min(K, H) x min(K, W) keys (NATTEN's definition;
`window_blocks.window_start`).

Three implementations, picked in this order when `impl=None` (each skipped one with its reason in
`.impl_reasons`; on the CPU the reference goes before flex, see `flex.preferred_order`):

- "natten": NATTEN's fused `natten.functional.na2d`, when NATTEN is installed (the window must fit in the map);
- "flex": `torch.nn.attention.flex_attention`, compiled, with the window's block mask over the row-major
  sequence (baselines/flex.py), where torch.compile can run;
- "reference": SDPA over query tiles with a mask (memory bounded by `chunk_bytes`), the labelled fallback.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from deltaconv_kernels.baselines import flex
from deltaconv_kernels.baselines.base import AttentionBaseline, select_impl
from deltaconv_kernels.baselines.window_blocks import NEIGHBORHOOD_IMPLS, axis_tiling, neighborhood_tile

IMPLS = NEIGHBORHOOD_IMPLS


def natten_status() -> str | None:
    """None when NATTEN can be used, else why not."""
    if importlib.util.find_spec("natten") is None:
        return "NATTEN is not installed (pip install natten)"
    return None


def impl_statuses(device="cpu") -> dict:
    """Each implementation's availability check on `device`, in the order `impl=None` tries them there
    (`flex.preferred_order`)."""
    checks = {"natten": natten_status, "flex": lambda: flex.flex_status(device), "reference": lambda: None}
    return {name: checks[name] for name in flex.preferred_order(IMPLS, device)}


def window_starts(length: int, kernel_size: int, device=None) -> torch.Tensor:
    """First key index of each position's window along one axis: clamp(i - K//2, 0, L - K)."""
    i = torch.arange(length, device=device)
    return (i - kernel_size // 2).clamp(min=0, max=max(length - kernel_size, 0))


def _axis_tiles(length: int, kernel_size: int, tile: int, device):
    """Per tile of `tile` query positions along one axis: the key span it needs and which keys each of its
    queries may see. Returns (key_index [n_tiles, span], allowed [n_tiles, tile, span])."""
    n_tiles, tile, span = axis_tiling(length, kernel_size, tile)
    kw = min(kernel_size, length)
    starts = window_starts(length, kernel_size, device)
    first = torch.arange(n_tiles, device=device) * tile
    key_start = starts[first].clamp(max=length - span)
    key_index = key_start[:, None] + torch.arange(span, device=device)                    # [n_tiles, span]
    query = (first[:, None] + torch.arange(tile, device=device)).clamp(max=length - 1)    # padded queries reuse
    q_start = starts[query]                                                               # the last window
    allowed = (key_index[:, None, :] >= q_start[..., None]) & (key_index[:, None, :] < q_start[..., None] + kw)
    return key_index, allowed


def neighborhood_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int],
                           kernel_size: int, scale: float | None = None, tile: int | None = None,
                           chunk_bytes: int = 64 << 20) -> torch.Tensor:
    """Reference neighborhood attention on `[B, heads, N, d]` tensors with N = H*W (row-major).

    Queries are cut into tile x tile blocks; each block attends, through SDPA with a boolean mask, to the
    (tile + K - 1)^2 keys that hold all its windows. Blocks are processed a band of tile rows at a time, as many
    bands as fit in `chunk_bytes` of gathered keys and values."""
    b, h, n, d = q.shape
    height, width = size
    if n != height * width:
        raise ValueError(f"size={size} does not match N={n}")
    tile = neighborhood_tile(kernel_size, tile)
    rows, row_ok = _axis_tiles(height, kernel_size, tile, q.device)
    cols, col_ok = _axis_tiles(width, kernel_size, tile, q.device)
    (n_r, th, span_r), (n_c, tw, span_c) = row_ok.shape, col_ok.shape
    km, vm = (t.reshape(b, h, height, width, d) for t in (k, v))
    # Queries padded to whole tiles: [B, h, n_r, th, n_c, tw, d] -> [B, n_r, n_c, h, th*tw, d].
    qm = q.reshape(b, h, height, width, d)
    qm = torch.nn.functional.pad(qm, (0, 0, 0, n_c * tw - width, 0, n_r * th - height))
    qt = qm.reshape(b, h, n_r, th, n_c, tw, d).permute(0, 2, 4, 1, 3, 5, 6).reshape(b, n_r, n_c, h, th * tw, d)
    out = torch.empty_like(qt)
    band_bytes = 2 * b * n_c * h * span_r * span_c * d * q.element_size()
    bands = max(1, min(n_r, chunk_bytes // max(band_bytes, 1)))
    for r0 in range(0, n_r, bands):
        r1 = min(n_r, r0 + bands)
        ri, ci = rows[r0:r1, None, :, None], cols[None, :, None, :]                      # -> [R, n_c, sr, sc]
        kk, vv = ((t[:, :, ri, ci].permute(0, 2, 3, 1, 4, 5, 6)
                   .reshape(b * (r1 - r0) * n_c, h, span_r * span_c, d)) for t in (km, vm))
        mask = (row_ok[r0:r1, None, :, None, :, None] & col_ok[None, :, None, :, None, :])  # [R, n_c, th, tw, sr, sc]
        mask = mask.reshape(1, (r1 - r0) * n_c, 1, th * tw, span_r * span_c).expand(b, -1, -1, -1, -1)
        o = F.scaled_dot_product_attention(qt[:, r0:r1].reshape(-1, h, th * tw, d), kk, vv,
                                           attn_mask=mask.reshape(-1, 1, th * tw, span_r * span_c), scale=scale)
        out[:, r0:r1] = o.reshape(b, r1 - r0, n_c, h, th * tw, d)
    out = out.reshape(b, n_r, n_c, h, th, tw, d).permute(0, 3, 1, 4, 2, 5, 6).reshape(b, h, n_r * th, n_c * tw, d)
    return out[:, :, :height, :width].reshape(b, h, n, d)


def neighborhood_attention_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int],
                                kernel_size: int, scale: float | None = None) -> torch.Tensor:
    """Neighborhood attention on `[B, heads, N, d]` through compiled flex_attention and the window's block mask
    (cached per size, K and device)."""
    height, width = size
    if q.shape[-2] != height * width:
        raise ValueError(f"size={size} does not match N={q.shape[-2]}")
    mask = flex.neighborhood_block_mask(height, width, kernel_size, q.device)
    return flex.flex_attend(q, k, v, mask, scale)


class NeighborhoodAttention(AttentionBaseline):
    """Self-attention restricted to each token's K x K neighborhood. `impl=None` picks the first of `IMPLS` that
    can run on the layer's device; the choice is in `.impl`, why the ones before it were skipped in
    `.impl_reasons`; forcing one that cannot run raises, saying why."""

    def __init__(self, dim: int, heads: int = 8, kernel_size: int = 13, impl: str | None = None,
                 chunk_bytes: int = 64 << 20, **kwargs):
        super().__init__(dim, heads, **kwargs)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        self.impl, self.impl_reasons = select_impl(impl, impl_statuses(self.to_q.weight.device))
        self.kernel_size = kernel_size
        self.chunk_bytes = chunk_bytes

    def _attend(self, q, k, v, x, size):
        if self.impl == "natten":
            return self._natten(q, k, v, size)
        if self.impl == "flex":
            return neighborhood_attention_flex(q, k, v, size, self.kernel_size, self.scale)
        return neighborhood_attention(q, k, v, size, self.kernel_size, self.scale, chunk_bytes=self.chunk_bytes)

    def _natten(self, q, k, v, size):
        if self.kernel_size > min(size):
            raise ValueError(f"NATTEN needs kernel_size={self.kernel_size} <= min(H, W) of the map {size}; "
                             "use impl='flex' or 'reference' for maps smaller than the window")
        from natten.functional import na2d  # NATTEN >= 0.17 layout: [B, H, W, heads, d]

        b, h, n, d = q.shape
        to_map = lambda t: t.transpose(1, 2).reshape(b, size[0], size[1], h, d)  # noqa: E731
        out = na2d(to_map(q), to_map(k), to_map(v), self.kernel_size, scale=self.scale)
        return out.reshape(b, n, h, d).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel_size={self.kernel_size}, impl={self.impl!r}"
