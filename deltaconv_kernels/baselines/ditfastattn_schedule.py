"""DiTFastAttn's per-step plan (which mode runs at each denoising step, and whether that step shares attention
across the two classifier-free-guidance halves), in plain Python: the layer (baselines/ditfastattn.py) and the
FLOP counts (flops.py) read the same plan, so they agree on when the residual is computed.

Modes: "full" (full attention; the residual `full - window` is computed as well, but only when a
"window_residual" step follows before the next "full" one), "window_residual" (window attention + that
residual), "share_timestep" (the previous step's output, no attention).

DiTFastAttn calibrates its plan greedily, per layer, against a quality threshold; pass such a plan as explicit
`modes`. `DiTFastAttnSchedule.periodic` (a full step every `full_every` steps) is our heuristic, not theirs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MODES = ("full", "window_residual", "share_timestep")
PUBLISHED_WINDOW = 64  # tokens, |i - j| <= w (the published scripts use 64 and 512)
PERIODIC_LABEL = "periodic (our heuristic; DiTFastAttn calibrates its plan greedily per layer)"


def window_half_width(n: int, window: int | float) -> int:
    """Half-width w in tokens of the band |i - j| <= w over N = `n` tokens: an int is a token count (as
    published), a float our option, a fraction of N (rounded up; 0.125 is N/8)."""
    if isinstance(window, bool):
        raise TypeError("window must be an int (tokens) or a float (fraction of N), got a bool")
    if isinstance(window, int):
        if window < 0:
            raise ValueError(f"window must be >= 0 tokens, got {window}")
        return window
    if not 0.0 <= float(window) <= 1.0:
        raise ValueError(f"a fractional window must lie in [0, 1], got {window}")
    return math.ceil(float(window) * n)


def residual_needed(mode_at, step: int, num_steps: int | None) -> bool:
    """Whether the full step `step` must cache the residual: a "window_residual" step follows before the next
    "full" one (`mode_at(i)` gives the mode of step i; `num_steps` None = the plan has no end, which only a
    periodic plan of full and window steps can be, so the scan stops at the next step)."""
    i = step + 1
    while num_steps is None or i < num_steps:
        mode = mode_at(i)
        if mode == "full":
            return False
        if mode == "window_residual":
            return True
        i += 1
    return False


class DiTFastAttnSchedule:
    """Explicit `modes` (one per step; e.g. a per-layer calibrated plan) or, from `periodic`, our periodic
    heuristic, which may be left without an end (`num_steps=None`) and is sized to the scheduler's number of
    steps at the start of each generation (`sized`)."""

    def __init__(self, modes: Sequence[str], cfg_share: Sequence[bool] | None = None, label: str = "explicit"):
        modes = tuple(modes)
        if not modes:
            raise ValueError("modes must list at least one step")
        bad = [m for m in modes if m not in MODES]
        if bad:
            raise ValueError(f"modes must be drawn from {MODES}, got {bad}")
        if modes[0] != "full":
            raise ValueError(f"the first step must be 'full' (later modes reuse its caches), got {modes[0]!r}")
        cfg_share = (False,) * len(modes) if cfg_share is None else tuple(bool(c) for c in cfg_share)
        if len(cfg_share) != len(modes):
            raise ValueError(f"cfg_share has {len(cfg_share)} entries, modes has {len(modes)}")
        self.modes: tuple[str, ...] | None = modes
        self.cfg_share = cfg_share
        self.label = label
        self.full_every: int | None = None

    @classmethod
    def periodic(cls, num_steps: int | None = None, full_every: int = 5, cfg_share: bool = False
                 ) -> DiTFastAttnSchedule:
        """A full step every `full_every` steps, window + residual in between (our heuristic). With `num_steps`
        None the plan has no end until `sized` gives it the scheduler's step count."""
        if isinstance(full_every, bool) or not isinstance(full_every, int) or full_every < 1:
            raise ValueError(f"full_every must be an int >= 1, got {full_every!r}")
        if num_steps is not None and (isinstance(num_steps, bool) or not isinstance(num_steps, int)
                                      or num_steps < 1):
            raise ValueError(f"num_steps must be an int >= 1 or None, got {num_steps!r}")
        n = num_steps or 1
        self = cls(["full" if i % full_every == 0 else "window_residual" for i in range(n)], [cfg_share] * n,
                   label=PERIODIC_LABEL)
        self.full_every = full_every
        if num_steps is None:
            self.modes, self.cfg_share = None, (bool(cfg_share),)
        return self

    @property
    def num_steps(self) -> int | None:
        return None if self.modes is None else len(self.modes)

    def __len__(self) -> int:
        if self.modes is None:
            raise TypeError("this periodic schedule has no end yet (sized() gives it the scheduler's step count)")
        return len(self.modes)

    def sized(self, num_steps: int) -> DiTFastAttnSchedule:
        """This plan for a generation of `num_steps` steps: a periodic plan is re-made at that length, an
        explicit one must already have it."""
        if self.full_every is not None:
            return DiTFastAttnSchedule.periodic(num_steps, self.full_every, self.cfg_share[0])
        if len(self.modes) != num_steps:
            raise ValueError(f"the DiTFastAttn schedule has {len(self.modes)} steps but the scheduler runs "
                             f"{num_steps}: give one mode per step")
        return self

    def mode(self, step: int) -> str:
        if self.modes is None:
            return "full" if self._check(step) % self.full_every == 0 else "window_residual"
        return self.modes[self._check(step)]

    def shares_cfg(self, step: int) -> bool:
        return self.cfg_share[0] if self.modes is None else self.cfg_share[self._check(step)]

    def needs_residual(self, step: int) -> bool:
        """At a full step: whether to compute and cache `full - window` (a window step follows before the next
        full step)."""
        return self.mode(step) == "full" and residual_needed(self.mode, step, self.num_steps)

    def _check(self, step: int) -> int:
        if step < 0 or (self.modes is not None and step >= len(self.modes)):
            raise IndexError(f"step {step} is outside the schedule's {self.num_steps} steps")
        return step

    def __repr__(self) -> str:
        if self.modes is None:
            return (f"DiTFastAttnSchedule.periodic(full_every={self.full_every}, cfg_share={self.cfg_share[0]}, "
                    f"num_steps=None) [{self.label}]")
        return f"DiTFastAttnSchedule(modes={list(self.modes)}, cfg_share={list(self.cfg_share)}) [{self.label}]"
