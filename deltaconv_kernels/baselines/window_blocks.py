"""The geometry of the windowed attention baselines, in plain Python: which (query, key) pairs each
implementation computes. The layers (baselines/neighborhood.py, baselines/ditfastattn.py, baselines/flex.py) build
their tiles and block masks from it and the FLOP counts (flops.py, torch-free) count from it, so the counted work is
the work done.

- The 2-D neighborhood window (NATTEN's definition): along an axis of length L, position i sees the min(K, L) keys
  from `window_start(i, L, K) = clamp(i - K//2, 0, L - K)` (shifted inward at the borders).
- The 1-D band of DiTFastAttn: query i sees keys |i - j| <= w over the flattened sequence.
- The tiled references: the neighborhood reference attends each tile x tile query tile (padded queries included)
  to the (tile + K - 1)^2 keys that hold all its windows; the band reference each block of queries to its key span.
- flex_attention's block masks over the row-major token sequence: a (q block, kv block) pair of `block` tokens each
  is listed when any of its pairs is allowed, and "full" when all are and both blocks are whole (as
  `create_block_mask` has it, which pads the sequence with masked pairs; flex then skips the mask inside). Every
  listed block is computed whole; the last block of a sequence is cut at its end (the CPU kernel computes
  min(block, remaining) rows/columns; a GPU kernel pads it, at most one block row and column more).
"""

from __future__ import annotations

from functools import lru_cache

FLEX_BLOCK = 128  # flex_attention's default sparse block size; the layers build their masks with it
NEIGHBORHOOD_IMPLS = ("natten", "flex", "reference")  # in the order impl=None tries them
BAND_IMPLS = ("flex", "reference")                    # likewise for DiTFastAttn's window


def window_start(i: int, length: int, kernel_size: int) -> int:
    """First key of position i's window along an axis: clamp(i - K//2, 0, L - K)."""
    return min(max(i - kernel_size // 2, 0), max(length - kernel_size, 0))


# ---- the tiled references ------------------------------------------------------------------------------------
def neighborhood_tile(kernel_size: int, tile: int | None = None) -> int:
    """The neighborhood reference's query tile side: max(8, K) unless given."""
    return tile or max(8, kernel_size)


def axis_tiling(length: int, kernel_size: int, tile: int) -> tuple[int, int, int]:
    """Along one axis of the neighborhood reference: (number of tiles, tile side, key span per tile). The tile is
    cut to the axis; the union of `tile` consecutive windows fits in tile + K - 1 keys."""
    t = min(tile, length)
    return -(-length // t), t, min(t + min(kernel_size, length) - 1, length)


def neighborhood_reference_pairs(height: int, width: int, kernel_size: int, tile: int | None = None) -> int:
    """(query, key) pairs the neighborhood reference computes over one head and sample (padded queries too)."""
    tile = neighborhood_tile(kernel_size, tile)
    n_r, th, span_r = axis_tiling(height, kernel_size, tile)
    n_c, tw, span_c = axis_tiling(width, kernel_size, tile)
    return n_r * th * span_r * n_c * tw * span_c


def band_block(half_width: int, block: int | None = None) -> int:
    """The band reference's query block: max(64, w) unless given."""
    return block or max(64, half_width)


def band_covers_all(n: int, half_width: int) -> bool:
    """Whether the band |i - j| <= w holds every pair of n tokens (then it is plain full attention)."""
    return half_width >= n - 1


def band_reference_spans(n: int, half_width: int, block: int | None = None) -> list[tuple[int, int, int, int]]:
    """The band reference's (q0, q1, k0, k1) per query block: queries [q0, q1) against keys [k0, k1)."""
    if band_covers_all(n, half_width):
        return [(0, n, 0, n)]
    block = band_block(half_width, block)
    return [(q0, min(n, q0 + block), max(0, q0 - half_width), min(n, q0 + block + half_width))
            for q0 in range(0, n, block)]


def band_reference_pairs(n: int, half_width: int, block: int | None = None) -> int:
    return sum((q1 - q0) * (k1 - k0) for q0, q1, k0, k1 in band_reference_spans(n, half_width, block))


# ---- flex_attention block masks ------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def neighborhood_flex_blocks(height: int, width: int, kernel_size: int, block: int = FLEX_BLOCK) -> tuple:
    """(partial, full): per query block of the row-major sequence, the sorted kv blocks holding any of its pairs
    and those holding only allowed pairs. A query block is cut into runs of one map row; a run of columns
    [c_a, c_b] of row r sees key rows [s_r, s_r + min(K, H)) and the key columns [s_{c_a}, s_{c_b} + min(K, W))
    (the union of its windows: the starts step by at most 1), each key row a contiguous range of the sequence.
    Full blocks are only looked for where every window spans the full map width (whole key rows); elsewhere
    a full block is left partial, which flex computes the same way, only with the mask applied."""
    n = height * width
    kh, kw = min(kernel_size, height), min(kernel_size, width)
    partial, full = [], []
    for q0 in range(0, n, block):
        q1 = min(n, q0 + block)
        seen: set[int] = set()
        rows_all: set[int] | None = None  # key rows every query of the block sees (only used when kw == width)
        for r in range(q0 // width, (q1 - 1) // width + 1):
            c_a, c_b = max(q0 - r * width, 0), min(q1 - r * width, width) - 1
            r_lo = window_start(r, height, kernel_size)
            k_lo, k_hi = window_start(c_a, width, kernel_size), window_start(c_b, width, kernel_size) + kw - 1
            for kr in range(r_lo, r_lo + kh):
                seen.update(range((kr * width + k_lo) // block, (kr * width + k_hi) // block + 1))
            rows = set(range(r_lo, r_lo + kh))
            rows_all = rows if rows_all is None else rows_all & rows
        full_blocks = set()
        if kw == width and q1 - q0 == block:  # every query sees whole key rows, `rows_all` by all of them
            whole_rows = lambda kb: range(kb * block // width, (kb * block + block - 1) // width + 1)  # noqa: E731
            full_blocks = {kb for kb in seen if kb * block + block <= n and rows_all.issuperset(whole_rows(kb))}
        full.append(tuple(sorted(full_blocks)))
        partial.append(tuple(sorted(seen - full_blocks)))
    return tuple(partial), tuple(full)


@lru_cache(maxsize=16)
def band_flex_blocks(n: int, half_width: int, block: int = FLEX_BLOCK) -> tuple:
    """(partial, full) kv blocks per query block for the band |i - j| <= w over n tokens: a block pair is
    listed when its nearest pair is within w, full when its farthest pair is."""
    partial, full = [], []
    for q0 in range(0, n, block):
        q1 = min(n, q0 + block)
        p, f = [], []
        for k0 in range(max(0, q0 - half_width) // block * block, min(n, q1 + half_width), block):
            k1 = min(n, k0 + block)
            nearest = max(0, k0 - (q1 - 1), q0 - (k1 - 1))
            farthest = max(q1 - 1 - k0, k1 - 1 - q0)
            if nearest <= half_width:
                whole = q1 - q0 == block and k1 - k0 == block
                (f if whole and farthest <= half_width else p).append(k0 // block)
        partial.append(tuple(p))
        full.append(tuple(f))
    return tuple(partial), tuple(full)


def flex_block_pairs(blocks, n: int, block: int = FLEX_BLOCK) -> int:
    """(query, key) pairs computed over the listed blocks ((partial, full) per query block) of an n x n mask:
    each block whole, the last one cut at the sequence end."""
    size = lambda i: min(block, n - i * block)  # noqa: E731
    return sum(size(qb) * size(kb) for part in blocks for qb, row in enumerate(part) for kb in row)
