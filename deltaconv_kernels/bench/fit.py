"""Extrapolating a method's latency to sizes it was not measured at, anchored on the FLOPs it executes.

A free power law fitted on the last few sizes is wrong in both directions: its exponent describes only the range
it saw (a quadratic method whose projections still dominate looks linear-ish, a noisy point bends it). Here a
method's time is modelled as `t = a + b * FLOPs` (a fixed cost plus a cost per FLOP), fitted per method on all of
its measured sizes by least squares on relative errors (so the small sizes count as much as the large ones),
with `b > 0`. The uncertainty band is the range of the predictions of the exact fits through every pair of
measured sizes, widened by the largest relative IQR of the measured points: with two points it is the points'
own noise, with more it also shows how far the model is from linear in FLOPs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import combinations


@dataclass(frozen=True)
class FlopsFit:
    a: float                    # seconds: fixed cost per call
    b: float                    # seconds per FLOP
    flops: tuple[float, ...]    # the measured points it was fitted on
    seconds: tuple[float, ...]
    rel_noise: float = 0.0      # largest IQR / median of the measured points

    @classmethod
    def fit(cls, flops, seconds, rel_noise: float = 0.0) -> FlopsFit:
        flops, seconds = tuple(float(f) for f in flops), tuple(float(s) for s in seconds)
        if len(flops) != len(seconds):
            raise ValueError(f"flops and seconds differ in length ({len(flops)} vs {len(seconds)})")
        if len(set(flops)) < 2:
            raise ValueError(f"a FLOPs fit needs at least 2 distinct FLOP counts, got {list(flops)}")
        if any(s <= 0 for s in seconds) or any(f <= 0 for f in flops):
            raise ValueError("flops and seconds must be positive")
        a, b = _weighted_line(flops, seconds)
        if b <= 0:  # noise made time fall with FLOPs: fall back to pure proportionality
            a, b = 0.0, sum(seconds) / sum(flops)
        return cls(a, b, flops, seconds, float(rel_noise))

    @classmethod
    def from_records(cls, records) -> FlopsFit:
        """Fitted on measured records (anything with flops_executed, seconds_median and seconds_iqr), with the
        largest relative IQR among them as the noise."""
        return cls.fit([r.flops_executed for r in records], [r.seconds_median for r in records],
                       max((r.seconds_iqr or 0.0) / r.seconds_median for r in records))

    def predict(self, flops: float) -> float:
        return max(self.a + self.b * flops, self.b * flops * 1e-3)

    def band(self, flops: float) -> tuple[float, float]:
        """(low, high) seconds at `flops`: the spread of the pairwise exact fits, widened by the points' noise."""
        preds = [self.predict(flops)]
        for (f1, s1), (f2, s2) in combinations(zip(self.flops, self.seconds), 2):
            if f1 != f2:
                b = (s2 - s1) / (f2 - f1)
                if b > 0:
                    preds.append(max(s1 + b * (flops - f1), b * flops * 1e-3))
        # a point whose IQR exceeds its median would push the low end below zero: no time is negative
        return max(min(preds) * (1 - self.rel_noise), 0.0), max(preds) * (1 + self.rel_noise)

    def as_dict(self, at_flops: float | None = None) -> dict:
        d = {"model": "seconds = a + b * flops_executed", **asdict(self)}
        if at_flops is not None:
            lo, hi = self.band(at_flops)
            d.update(predicted_s=self.predict(at_flops), band_s=[lo, hi])
        return d


def _weighted_line(x, y) -> tuple[float, float]:
    """Least squares of y = a + b x minimising sum(((a + b x - y) / y)^2)."""
    w = [1.0 / (v * v) for v in y]
    sw = sum(w)
    sx = sum(wi * xi for wi, xi in zip(w, x))
    sy = sum(wi * yi for wi, yi in zip(w, y))
    sxx = sum(wi * xi * xi for wi, xi in zip(w, x))
    sxy = sum(wi * xi * yi for wi, xi, yi in zip(w, x, y))
    det = sw * sxx - sx * sx
    b = (sw * sxy - sx * sy) / det
    a = (sy - b * sx) / sw
    return a, b
