"""The layer grid's cases: one `Case` per (method, step mode, layer shape, resolution), grouped per (layer shape,
resolution) in the order they run."""

from __future__ import annotations

from dataclasses import dataclass

from deltaconv_kernels import flops
from deltaconv_kernels.bench.config import DITFASTATTN_MODES, METHODS, MODELS, NEIGHBORHOOD_VARIANTS, SHAPES
from deltaconv_kernels.resolutions import Resolution, grid_between, resolution


@dataclass(frozen=True)
class Case:
    method: str
    model: str
    res: Resolution
    # "forward"; a DiTFastAttn step mode for "ditfastattn"; for "neighborhood", a forced implementation ("flex")
    # beside "forward", the layer's own choice (its fastest on the device)
    mode: str = "forward"

    @property
    def impl(self) -> str | None:
        return self.mode if self.method == "neighborhood" and self.mode != "forward" else None

    @property
    def shape(self) -> flops.LayerShape:
        return SHAPES[self.model]

    @property
    def tokens(self) -> tuple[int, int]:
        return self.shape.tokens(self.res.height, self.res.width)

    @property
    def name(self) -> str:
        mode = f"[{self.mode}]" if self.mode != "forward" else ""
        return f"{self.method}{mode}-{self.model}-{self.res.label}"


def cases_for(model: str, res: Resolution, methods=METHODS) -> list[Case]:
    """The cases of one group, ΔConvBlock first (the speedups are taken over it)."""
    out = []
    for m in methods:
        if m == "ditfastattn":
            out += [Case(m, model, res, mode) for mode in DITFASTATTN_MODES]
        elif m == "neighborhood":
            out += [Case(m, model, res)] + [Case(m, model, res, impl) for impl in NEIGHBORHOOD_VARIANTS]
        else:
            out.append(Case(m, model, res))
    return sorted(out, key=lambda c: c.method != "deltaconv")


def _as_resolution(r) -> Resolution:
    return r if isinstance(r, Resolution) else resolution(r)


def groups(models=MODELS, max_resolution="2K", methods=METHODS, min_resolution="512", resolutions=None
           ) -> list[list[Case]]:
    """Every (model, resolution) group in run order: sizes increasing, so predictions can use smaller sizes.
    The sizes are the grid's from `min_resolution` to `max_resolution` (these two included whatever they are), or
    exactly `resolutions` when given. A size is a `Resolution` or its spelling (`2K`, `768`, `1024x768`)."""
    if resolutions is not None:
        sizes = sorted({_as_resolution(r) for r in resolutions}, key=lambda r: (r.pixels, r.height))
    else:
        sizes = grid_between(_as_resolution(min_resolution), _as_resolution(max_resolution))
    return [cases_for(model, r, methods) for r in sizes for model in models]
