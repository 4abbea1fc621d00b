"""Image sizes by name: the one definition the benchmarks, the FLOPs tables and the README use.

A size is `height x width` in pixels (the order every table of the package prints). The paper's "4K", "8K" and
"16K" are 3840x2160, 7680x4320 and 15360x8640; its Table 1 also uses 4096x2160 and 2560x1440, which get names of
their own here ("4K-DCI", "QHD") so that "2K" and "4K" mean one size each. Any other size is spelled `768`
(square) or `1024x768` (height x width). Torch-free: flops.py imports it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Resolution:
    label: str
    height: int
    width: int

    @property
    def pixels(self) -> int:
        return self.height * self.width


NAMED = (
    Resolution("512", 512, 512), Resolution("1K", 1024, 1024), Resolution("2K", 2048, 2048),
    Resolution("QHD", 2560, 1440), Resolution("4K", 3840, 2160), Resolution("4K-DCI", 4096, 2160),
    Resolution("8K", 7680, 4320), Resolution("16K", 15360, 8640),
)
# The layer grid's sizes (`deltaconv bench`, `pytest benchmarks/`), smallest first.
GRID = tuple(r for r in NAMED if r.label in ("512", "1K", "2K", "4K", "8K", "16K"))
_SIZE = re.compile(r"(\d+)(?:x(\d+))?")


def resolution(text: str) -> Resolution:
    """A named size (case-insensitive) or `N` / `HxW` in pixels; a spelled size that equals a named one takes its
    name. ValueError naming what is accepted otherwise."""
    spelled = str(text).strip()
    named = next((r for r in NAMED if r.label.lower() == spelled.lower()), None)
    if named is not None:
        return named
    m = _SIZE.fullmatch(spelled.lower())
    if m is None or int(m.group(1)) < 1 or int(m.group(2) or m.group(1)) < 1:
        raise ValueError(f"a resolution is one of {[r.label for r in NAMED]}, N (N x N pixels) or HxW (e.g. 768, "
                         f"1024x768), got {text!r}")
    h, w = int(m.group(1)), int(m.group(2) or m.group(1))
    same = next((r for r in NAMED if (r.height, r.width) == (h, w)), None)
    return same or Resolution(f"{h}" if h == w else f"{h}x{w}", h, w)


def grid_between(low: Resolution, high: Resolution) -> list[Resolution]:
    """The grid sizes from `low` to `high` (by pixels), with `low` and `high` themselves when they are not grid
    sizes; smallest first, each size once."""
    if low.pixels > high.pixels:
        raise ValueError(f"the smallest resolution {low.label} is above the largest {high.label}")
    chosen = [r for r in GRID if low.pixels <= r.pixels <= high.pixels] + [low, high]
    unique = {(r.height, r.width): r for r in reversed(chosen)}
    return sorted(unique.values(), key=lambda r: (r.pixels, r.height))
