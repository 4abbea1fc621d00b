"""Running per-layer averages of the locality measures over the captured attention-map chunks, so that no map is
kept after it has been measured (memory stays bounded by one chunk plus a few maps kept for plotting).

Averages: per step (timestep), the mean over batch samples, heads and sampled queries; then the mean over steps
with equal weight per step. M_hp averages only the queries whose filtered map is not empty (see `locality`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from deltaconv_kernels.analysis import locality
from deltaconv_kernels.analysis.capture import CapturedMaps


@dataclass
class _Sums:
    mass: torch.Tensor
    count: int = 0
    hp_mass: torch.Tensor | None = None
    hp_count: int = 0


@dataclass
class LayerStats:
    """Everything measured for one layer, after averaging."""
    name: str
    hw: tuple[int, int]
    heads: int
    kernel_sizes: list[int]
    mass: list[float]                      # M(k), mean over steps
    mass_grad: list[float]                 # dM/dk
    hp_mass: list[float] | None            # M_hp(k); None when no query had high-frequency content
    hp_mass_grad: list[float] | None
    mass_by_step: dict[str, list[float]]   # M(k) of each step
    queries_per_step: int                  # batch * heads * sampled queries measured per step
    example_maps: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # query -> mean map [H, W]


class LocalityAccumulator:
    """Consumer for `AttentionCapture`: accumulates M(k), M_hp(k) and the maps of `plot_queries(h, w)`."""

    def __init__(self, hp_cutoff: float = 0.1, hp_order: int = 2, hp_power: int = 1, max_kernel: int | None = None,
                 plot_queries: Callable[[int, int], Sequence[tuple[int, int]]] | None = None):
        locality.butterworth_highpass(2, 2, hp_cutoff, hp_order)  # validates cutoff and order now, not mid-run
        if hp_power not in (1, 2):
            raise ValueError(f"hp_power must be 1 or 2, got {hp_power!r}")
        self.hp_cutoff, self.hp_order, self.hp_power, self.max_kernel = hp_cutoff, hp_order, hp_power, max_kernel
        self.plot_queries = plot_queries or (lambda h, w: ())
        self._sums: dict[str, dict[object, _Sums]] = {}
        self._meta: dict[str, tuple[tuple[int, int], int, list[int]]] = {}
        self._examples: dict[str, dict[tuple[int, int], list]] = {}

    def __call__(self, c: CapturedMaps) -> None:
        h, w = c.hw
        if c.layer not in self._meta:
            self._meta[c.layer] = (c.hw, c.num_heads, locality.odd_kernel_sizes(h, w, self.max_kernel))
            self._examples[c.layer] = {q: [torch.zeros(h, w, dtype=torch.float64), 0] for q in self.plot_queries(h, w)}
        hw, _, ks = self._meta[c.layer]
        if hw != c.hw:
            raise ValueError(f"layer {c.layer} was measured at {hw[0]}x{hw[1]} and now at {h}x{w}: analyse one "
                             "resolution per run")
        qy, qx = c.qy.to(c.maps.device), c.qx.to(c.maps.device)
        mass = locality.score_mass(c.maps, qy, qx, ks)  # [B, hc, S, L]
        hp, valid = locality.highpass_mass(c.maps, qy, qx, ks, self.hp_cutoff, self.hp_order, self.hp_power)
        sums = self._sums.setdefault(c.layer, {}).setdefault(
            c.step, _Sums(torch.zeros(len(ks), dtype=torch.float64), hp_mass=torch.zeros(len(ks), dtype=torch.float64)))
        sums.mass += mass.reshape(-1, len(ks)).sum(0).cpu()
        sums.count += mass.numel() // len(ks)
        sums.hp_mass += hp.reshape(-1, len(ks))[valid.reshape(-1)].sum(0).cpu()
        sums.hp_count += int(valid.sum())
        positions = list(zip(c.qy.tolist(), c.qx.tolist()))
        for query, acc in self._examples[c.layer].items():
            if query in positions:  # head- and batch-mean of this query's map
                acc[0] += c.maps[:, :, positions.index(query)].to(torch.float64).sum((0, 1)).cpu()
                acc[1] += c.maps.shape[0] * c.maps.shape[1]

    def results(self) -> dict[str, LayerStats]:
        out = {}
        for name, steps in self._sums.items():
            hw, heads, ks = self._meta[name]
            by_step = {str(step): (s.mass / s.count) for step, s in steps.items()}
            mass = torch.stack(list(by_step.values())).mean(0)
            hp_steps = [s.hp_mass / s.hp_count for s in steps.values() if s.hp_count]
            hp = torch.stack(hp_steps).mean(0) if hp_steps else None
            counts = {s.count for s in steps.values()}
            out[name] = LayerStats(
                name=name, hw=hw, heads=heads, kernel_sizes=ks, mass=mass.tolist(),
                mass_grad=locality.mass_gradient(ks, mass).tolist(),
                hp_mass=None if hp is None else hp.tolist(),
                hp_mass_grad=None if hp is None else locality.mass_gradient(ks, hp).tolist(),
                mass_by_step={k: v.tolist() for k, v in by_step.items()},
                queries_per_step=max(counts),
                example_maps={q: (m / n).float() for q, (m, n) in self._examples[name].items() if n})
        return out
