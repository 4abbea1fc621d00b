"""The one definition of a pyramid stage's pooled size (docs/DESIGN.md §1). Every backend, the reference, the
validation and the FLOP counts call `pooled_size`; it imports nothing, so any module (the Triton launchers
included) can use it. The C++ twin is `deltaconv::pooled_size` in csrc/include/deltaconv/geometry.h."""

from __future__ import annotations


def pooled_size(h: int, w: int, s: float) -> tuple[int, int]:
    """`(max(1, int(h*s)), max(1, int(w*s)))`: the map a stage at scale `s` pools an `h x w` map to. The floor of
    1 lets thin maps (a 4x1 token map at s=0.5) run, where the released code would crash."""
    return max(1, int(h * s)), max(1, int(w * s))
