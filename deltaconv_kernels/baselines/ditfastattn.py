"""DiTFastAttn-style attention (Yuan et al. 2024), as its published code does it: per denoising step a plan
(deltaconv_kernels.baselines.ditfastattn_schedule) picks one of

- "full": full attention; when a window step follows before the next full step it also computes the 1-D window
  attention and caches the residual `full - window`;
- "window_residual": window attention plus the residual cached at the last full step (WA-RS);
- "share_timestep": reuse the layer's output of the previous step (AST), no attention at all;

and, per step, whether the two classifier-free-guidance halves share one computation (ASC): the conditional half
is computed and copied. Which half that is depends on the pipeline: DiT orders the batch [cond, uncond]
(`cond_half="first"`), Stable Diffusion and PixArt [uncond, cond] (`cond_half="second"`).

The window is a band over the flattened token sequence, query i sees keys |i - j| <= w, with w a token count as
in the published scripts (64 by default; they also use 512); a float is our option, a fraction of N (0.125:
N/8). `window_impl` picks how it runs (`.window_impl`; None: the first that can run, the skipped ones' reasons in
`.window_impl_reasons`; flex first, except on the CPU): "flex", compiled flex_attention with the band's block
mask (baselines/flex.py), or "reference", SDPA over query blocks with a band mask; both in O(N * w) memory.
Caches are stored at full batch size, pre out-projection for the residual. Without a plan the layer runs our
periodic heuristic (a full step every `full_every`), sized to the scheduler's steps at the start of each
generation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deltaconv_kernels.baselines import flex
from deltaconv_kernels.baselines.base import AttentionBaseline, select_impl
from deltaconv_kernels.baselines.ditfastattn_schedule import (
    MODES,
    PUBLISHED_WINDOW,
    DiTFastAttnSchedule,
    window_half_width,
)
from deltaconv_kernels.baselines.window_blocks import BAND_IMPLS, band_covers_all, band_reference_spans

__all__ = ["MODES", "COND_HALVES", "WINDOW_IMPLS", "DiTFastAttnAttention", "DiTFastAttnSchedule",
           "window_attention_1d", "window_half_width"]

COND_HALVES = ("first", "second")  # where the conditional half of a CFG batch is
WINDOW_IMPLS = BAND_IMPLS  # in the order window_impl=None tries them


def window_impl_statuses(device="cpu") -> dict:
    """Each window implementation's availability check on `device`, in the order `window_impl=None` tries them
    there (`flex.preferred_order`: the reference first on the CPU)."""
    checks = {"flex": lambda: flex.flex_status(device), "reference": lambda: None}
    return {name: checks[name] for name in flex.preferred_order(WINDOW_IMPLS, device)}


def window_attention_1d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, half_width: int,
                        block: int | None = None, impl: str = "reference") -> torch.Tensor:
    """Attention of each query i to keys |i - j| <= half_width, on `[B, heads, N, d]`: "reference" runs SDPA in
    query blocks of `block` (default max(64, w)) against their key spans with a band mask; "flex" runs compiled
    flex_attention with the band's block mask (`block` does not apply)."""
    n = q.shape[-2]
    if impl == "flex":
        return flex.flex_attend(q, k, v, flex.band_block_mask(n, half_width, q.device))
    if impl != "reference":
        raise ValueError(f"impl must be one of {WINDOW_IMPLS}, got {impl!r}")
    if band_covers_all(n, half_width):
        return F.scaled_dot_product_attention(q, k, v)
    out = torch.empty_like(q)
    for q0, q1, k0, k1 in band_reference_spans(n, half_width, block):
        qi = torch.arange(q0, q1, device=q.device)[:, None]
        kj = torch.arange(k0, k1, device=q.device)[None, :]
        mask = (qi - kj).abs() <= half_width
        out[..., q0:q1, :] = F.scaled_dot_product_attention(q[..., q0:q1, :], k[..., k0:k1, :], v[..., k0:k1, :],
                                                            attn_mask=mask)
    return out


class DiTFastAttnAttention(AttentionBaseline):
    """Self-attention with DiTFastAttn's per-step compression. The step comes from `step=` or an internal
    counter that advances on every call; `start_generation(num_steps)` (called by `replace_attention`'s hook at
    every new generation) clears the counter and the caches and sizes a periodic plan to the scheduler's steps.
    `size` is accepted and checked but not needed (the window is 1-D)."""

    needs_size = False

    def __init__(self, dim: int, heads: int = 8, schedule: DiTFastAttnSchedule | None = None,
                 window: int | float = PUBLISHED_WINDOW, cond_half: str = "second", full_every: int = 5,
                 window_impl: str | None = None, **kwargs):
        super().__init__(dim, heads, **kwargs)
        self.window_impl, self.window_impl_reasons = select_impl(
            window_impl, window_impl_statuses(self.to_q.weight.device), arg="window_impl")
        window_half_width(1, window)  # validates the type and range now, not at the first call
        if cond_half not in COND_HALVES:
            raise ValueError(f"cond_half must be one of {COND_HALVES} (where a CFG batch holds the conditional "
                             f"half), got {cond_half!r}")
        self.window = window
        self.cond_half = cond_half
        self.schedule = schedule if schedule is not None else DiTFastAttnSchedule.periodic(None, full_every)
        if not isinstance(self.schedule, DiTFastAttnSchedule):
            raise TypeError(f"schedule must be a DiTFastAttnSchedule, got {type(schedule).__name__}")
        self.reset()

    def reset(self) -> None:
        self.step = 0
        self._residual: torch.Tensor | None = None  # full - window, [B, N, C] before the out projection
        self._last_output: torch.Tensor | None = None

    def start_generation(self, num_steps: int | None = None) -> None:
        """A new generation: reset, and (when known) size the plan to the scheduler's `num_steps`."""
        self.reset()
        if num_steps is not None:
            self.schedule = self.schedule.sized(num_steps)

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, size=None, step=None, **kw):
        self.check_input(hidden_states, encoder_hidden_states, attention_mask, kw)
        self.resolve_size(hidden_states.shape[1], size)
        step = self.step if step is None else step
        out = self._step(hidden_states, step)
        self.step = step + 1  # only a step that ran advances the counter
        self._last_output = out
        return out

    def _half(self, t: torch.Tensor) -> torch.Tensor:
        b = t.shape[0] // 2
        return t[:b] if self.cond_half == "first" else t[b:]

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
        x = self._half(hidden_states) if share else hidden_states
        q, k, v = self.project_qkv(x)
        w = window_half_width(x.shape[1], self.window)
        if mode == "full":
            attended = self.merge_heads(F.scaled_dot_product_attention(q, k, v))
            if self.schedule.needs_residual(step):
                window = self.merge_heads(window_attention_1d(q, k, v, w, impl=self.window_impl))
                self._residual = self._expand(attended - window, share)
        else:  # window_residual
            residual = self._half(self._residual) if share else self._residual
            attended = self.merge_heads(window_attention_1d(q, k, v, w, impl=self.window_impl)) + residual
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
        window = f"{self.window} tokens" if isinstance(self.window, int) else f"{self.window} * N (ours)"
        return (f"{super().extra_repr()}, window={window}, window_impl={self.window_impl!r}, "
                f"cond_half={self.cond_half!r}, schedule={self.schedule!r}")
