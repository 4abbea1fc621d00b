"""DiTFastAttn-style attention (Yuan et al. 2024): per denoising step, a schedule picks one of

- "full": full attention; also computes the 1-D window attention and caches the residual `full - window`;
- "window_residual": window attention plus the residual cached at the last full step (WA-RS);
- "share_timestep": reuse the layer's output of the previous step (AST), no attention at all;

and, per step, whether the two classifier-free-guidance halves of the batch share one computation (ASC: the
conditional half, i.e. the second half in diffusers' `[uncond, cond]` order, is computed and copied).

The window is DiTFastAttn's: a band over the flattened token sequence, query i sees keys |i - j| <= w, with the
half-width w given in tokens (int) or as a fraction of N (float). It runs in query blocks with a band mask, so
memory is O(N * w), not O(N^2). Caches are stored at full batch size, pre out-projection for the residual.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from deltaconv_kernels.baselines.base import AttentionBaseline

MODES = ("full", "window_residual", "share_timestep")


class DiTFastAttnSchedule:
    """Which mode runs at each step and whether that step shares attention across the CFG halves."""

    def __init__(self, modes: Sequence[str], cfg_share: Sequence[bool] | None = None):
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
        self.modes = modes
        self.cfg_share = cfg_share

    @classmethod
    def periodic(cls, num_steps: int, full_every: int = 5, cfg_share: bool = False) -> DiTFastAttnSchedule:
        """A full step every `full_every` steps, window + residual in between."""
        if num_steps < 1 or full_every < 1:
            raise ValueError(f"num_steps and full_every must be >= 1, got {num_steps}, {full_every}")
        modes = ["full" if i % full_every == 0 else "window_residual" for i in range(num_steps)]
        return cls(modes, [cfg_share] * num_steps)

    def __len__(self) -> int:
        return len(self.modes)

    def mode(self, step: int) -> str:
        return self.modes[self._check(step)]

    def shares_cfg(self, step: int) -> bool:
        return self.cfg_share[self._check(step)]

    def _check(self, step: int) -> int:
        if not 0 <= step < len(self.modes):
            raise IndexError(f"step {step} is outside the schedule's {len(self.modes)} steps")
        return step

    def __repr__(self) -> str:
        return f"DiTFastAttnSchedule(modes={list(self.modes)}, cfg_share={list(self.cfg_share)})"


def window_half_width(n: int, window: int | float) -> int:
    """Half-width in tokens: an int is used as given, a float is a fraction of N (rounded up)."""
    if isinstance(window, bool):
        raise TypeError("window must be an int (tokens) or a float (fraction of N), got a bool")
    if isinstance(window, int):
        if window < 0:
            raise ValueError(f"window must be >= 0 tokens, got {window}")
        return window
    if not 0.0 <= float(window) <= 1.0:
        raise ValueError(f"a fractional window must lie in [0, 1], got {window}")
    return math.ceil(float(window) * n)


def window_attention_1d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, half_width: int,
                        block: int | None = None) -> torch.Tensor:
    """Attention of each query i to keys |i - j| <= half_width, on `[B, heads, N, d]`, in query blocks."""
    n = q.shape[-2]
    if half_width >= n - 1:
        return F.scaled_dot_product_attention(q, k, v)
    block = block or max(64, half_width)
    out = torch.empty_like(q)
    for q0 in range(0, n, block):
        q1 = min(n, q0 + block)
        k0, k1 = max(0, q0 - half_width), min(n, q1 + half_width)
        qi = torch.arange(q0, q1, device=q.device)[:, None]
        kj = torch.arange(k0, k1, device=q.device)[None, :]
        mask = (qi - kj).abs() <= half_width
        out[..., q0:q1, :] = F.scaled_dot_product_attention(q[..., q0:q1, :], k[..., k0:k1, :], v[..., k0:k1, :],
                                                            attn_mask=mask)
    return out


class DiTFastAttnAttention(AttentionBaseline):
    """Self-attention with DiTFastAttn's per-step compression. The step comes from `step=` or an internal
    counter that advances on every call; `reset()` clears the counter and the caches (call it per generation).
    `size` is accepted and checked but not needed (the window is 1-D)."""

    needs_size = False

    def __init__(self, dim: int, heads: int = 8, schedule: DiTFastAttnSchedule | None = None,
                 window: int | float = 0.125, **kwargs):
        super().__init__(dim, heads, **kwargs)
        window_half_width(1, window)  # validates the type and range now, not at the first call
        self.window = window
        self.schedule = schedule if schedule is not None else DiTFastAttnSchedule(["full"])
        if not isinstance(self.schedule, DiTFastAttnSchedule):
            raise TypeError(f"schedule must be a DiTFastAttnSchedule, got {type(schedule).__name__}")
        self.reset()

    def reset(self) -> None:
        self.step = 0
        self._residual: torch.Tensor | None = None  # full - window, [B, N, C] before the out projection
        self._last_output: torch.Tensor | None = None

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, size=None, step=None, **kw):
        self.check_input(hidden_states, encoder_hidden_states, attention_mask, kw)
        self.resolve_size(hidden_states.shape[1], size)
        step = self.step if step is None else step
        out = self._step(hidden_states, step)
        self.step = step + 1  # only a step that ran advances the counter
        self._last_output = out
        return out

    def _step(self, hidden_states: torch.Tensor, step: int) -> torch.Tensor:
        mode, share = self.schedule.mode(step), self.schedule.shares_cfg(step)
        b = hidden_states.shape[0]
        if share and b % 2:
            raise ValueError(f"step {step} shares attention across CFG halves but the batch size {b} is odd")
        if mode == "share_timestep":
            self._check_cache(self._last_output, "an output", hidden_states, step)
            return self._last_output
        if mode == "window_residual":
            self._check_cache(self._residual, "a residual", hidden_states, step)
        x = hidden_states[b // 2:] if share else hidden_states
        q, k, v = self.project_qkv(x)
        w = window_half_width(x.shape[1], self.window)
        if mode == "full":
            full = self.merge_heads(F.scaled_dot_product_attention(q, k, v))
            self._residual = self._expand(full - self.merge_heads(window_attention_1d(q, k, v, w)), share)
            attended = full
        else:  # window_residual
            residual = self._residual[b // 2:] if share else self._residual
            attended = self.merge_heads(window_attention_1d(q, k, v, w)) + residual
        return self._expand(self.to_out[1](self.to_out[0](attended)), share)

    def set_cache(self, residual: torch.Tensor | None = None, last_output: torch.Tensor | None = None) -> None:
        """Install caches as a full step would leave them (`[B, N, C]`), e.g. to time a compressed step alone."""
        for name, t in (("residual", residual), ("last_output", last_output)):
            if t is not None and (t.dim() != 3 or t.shape[-1] != self.dim):
                raise ValueError(f"{name} must be [B, N, {self.dim}], got shape {tuple(t.shape)}")
        if residual is not None:
            self._residual = residual
        if last_output is not None:
            self._last_output = last_output

    @staticmethod
    def _expand(t: torch.Tensor, share: bool) -> torch.Tensor:
        return torch.cat([t, t]) if share else t

    @staticmethod
    def _check_cache(cache, what, hidden_states, step) -> None:
        if cache is None:
            raise RuntimeError(f"step {step} reuses {what} from an earlier step but none is cached (call reset() "
                               "and start the schedule from step 0)")
        if cache.shape[:2] != hidden_states.shape[:2]:
            raise ValueError(f"step {step}: cached {what} has [B, N] = {list(cache.shape[:2])}, but hidden_states "
                             f"has {list(hidden_states.shape[:2])}")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}, steps={len(self.schedule)}"
