"""Row bands: which contiguous rows of a map each rank holds (docs/DESIGN.md §9). Pure integer geometry, no
torch: the communication plan of every op is computed from these on every rank identically."""

from __future__ import annotations

Band = tuple[int, int]  # [start, end) rows of the global map


def split_rows(rows: int, world: int) -> tuple[Band, ...]:
    """Contiguous bands of `rows` rows for `world` ranks, sizes differing by at most one (uneven allowed). A
    rank gets an empty band only when `rows < world`."""
    if rows < 1 or world < 1:
        raise ValueError(f"rows and world must be positive, got rows={rows}, world={world}")
    return tuple(((r * rows) // world, ((r + 1) * rows) // world) for r in range(world))


def check_bands(bands, rows: int, world: int) -> tuple[Band, ...]:
    """`bands` as a tuple of (start, end), checked to cover `[0, rows)` contiguously in rank order, one per rank."""
    bands = tuple((int(s), int(e)) for s, e in bands)
    if len(bands) != world:
        raise ValueError(f"bands must have one (start, end) per rank ({world}), got {len(bands)}")
    pos = 0
    for r, (s, e) in enumerate(bands):
        if s != pos or e < s:
            raise ValueError(f"bands must cover rows [0, {rows}) contiguously in rank order; rank {r} has "
                             f"[{s}, {e}) after row {pos}")
        pos = e
    if pos != rows:
        raise ValueError(f"bands cover rows [0, {pos}) but the map has {rows} rows")
    return bands


def overlap(a: Band, b: Band) -> Band | None:
    """The intersection of two row ranges, or None when empty."""
    s, e = max(a[0], b[0]), min(a[1], b[1])
    return (s, e) if s < e else None


def widen(band: Band, before: int, after: int) -> Band:
    """`[start - before, end + after)`: the rows a band's output needs (may reach outside the map: zeros)."""
    return band[0] - before, band[1] + after
