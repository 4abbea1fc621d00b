"""Closed-form communication volumes (docs/DESIGN.md §9), written from the geometry and not from the code that
moves the bytes, so the counts of `BandComm.sent` can be checked against them; and the per-layer volumes of
sequence-parallel attention (xDiT's cost table: Ulysses all-to-all of q, k, v, o moves 4/N x pixels x hidden per
layer, ring attention passes K and V around the ring: 2 x pixels x hidden per layer)."""

from __future__ import annotations

from deltaconv_kernels.geometry import pooled_size


def block_bytes_sent(neighbours: int, width: int, channels: int, inner: int, kernel_size: int, scales,
                     batch: int, element_size: int, rows: int) -> int:
    """Bytes one rank sends for one ΔConvBlock forward when every band boundary is aligned: bands at least
    K//2 + 1 rows thick, no pooling window straddling a boundary and each boundary at a multiple of
    1/s rows (so pooled boundaries are whole pooled rows). Per boundary with a neighbour:
    - s = 1: the K//2 rows of `u` next to it: `r * W * Ci * element_size`;
    - s < 1: the r pooled rows of the pooled conv's halo and 1 more for the bilinear upsample's second tap,
      pooled in fp32: `(r + 1) * Ws * Ci * 4` (0.5 < s < 1 needs no different count: one tap row beyond);
    plus the pooled-bias all-reduce payload `B * C * 4` (fp32 sums)."""
    r = kernel_size // 2
    per_boundary = 0
    for s in scales:
        if s == 1.0:
            per_boundary += r * width * inner * element_size
        else:
            _, ws = pooled_size(rows, width, s)
            per_boundary += (r + 1) * ws * inner * 4
    return neighbours * per_boundary * batch + batch * channels * 4


def ulysses_bytes_per_layer(pixels: int, hidden: int, world: int, element_size: int) -> float:
    """Ulysses sequence parallelism: all-to-all of q, k, v and the output, 4/N x pixels x hidden per layer."""
    return 4 / world * pixels * hidden * element_size


def ring_bytes_per_layer(pixels: int, hidden: int, element_size: int) -> float:
    """Ring attention: every K and V block passes around the ring, 2 x pixels x hidden per layer."""
    return 2 * pixels * hidden * element_size
