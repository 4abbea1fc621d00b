"""ΔConvBlock kernel size per layer from its effective receptive field.

Default rule, in the spirit of the released models (SD1.5 uses K = 3..11 where attention ERFs are ~5..20):
K = the odd integer nearest to `fraction * ERF` (fraction 0.6, halves round up), clamped to [k_min, k_max] =
[3, 31]. A layer without an ERF (no k of the measured grid reached the threshold, only possible with a capped
grid) gets k_max. The result maps layer name -> K, which `convert(model, kernel_sizes=...)` takes as it is."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


def nearest_odd(x: float) -> int:
    """The odd integer nearest to x (ties go up), at least 1."""
    return max(1, 2 * math.floor((x - 1) / 2 + 0.5) + 1)


@dataclass(frozen=True)
class KernelRule:
    fraction: float = 0.6
    k_min: int = 3
    k_max: int = 31

    def __post_init__(self):
        if not self.fraction > 0:
            raise ValueError(f"fraction must be > 0, got {self.fraction}")
        for name in ("k_min", "k_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
                raise ValueError(f"{name} must be a positive odd int, got {value!r}")
        if self.k_min > self.k_max:
            raise ValueError(f"k_min={self.k_min} must be <= k_max={self.k_max}")

    def __call__(self, erf: int | None) -> int:
        if erf is None:
            return self.k_max
        return min(self.k_max, max(self.k_min, nearest_odd(self.fraction * erf)))


def recommend_kernel_sizes(erfs: Mapping[str, int | None], rule: KernelRule | None = None) -> dict[str, int]:
    """{layer name: odd K} from {layer name: ERF}."""
    rule = rule or KernelRule()
    return {name: rule(erf) for name, erf in erfs.items()}
