"""DiTFastAttn: the 1-D window attention against a band mask, the residual and CFG-sharing steps, and
the step plan (when the residual is computed, sizing to the scheduler, errors)."""

from __future__ import annotations

import pytest
import torch
from explicit_attention import F64, explicit_out, explicit_qkv, make, masked_attention, rand_x

from deltaconv_kernels import baselines
from deltaconv_kernels.testing import assert_close


def band_mask(n, w):
    i = torch.arange(n)
    return (i[:, None] - i[None, :]).abs() <= w


@pytest.mark.parametrize("n,w,block", [(23, 3, 4), (40, 0, 7), (17, 16, None), (9, 30, None)])
def test_window_attention_1d_matches_band_mask(gen, n, w, block):
    q, k, v = (torch.randn(2, 2, n, 5, generator=gen, dtype=F64) for _ in range(3))
    out = baselines.window_attention_1d(q, k, v, w, block=block)
    assert_close(out, masked_attention(q, k, v, band_mask(n, w)))


def schedule(modes, cfg=None):
    return baselines.DiTFastAttnSchedule(modes, cfg)


def test_ditfastattn_residual_step_equals_full_attention(gen):
    sched = schedule(["full", "window_residual", "window_residual", "share_timestep"])
    layer = make(baselines.DiTFastAttnAttention, 16, 2, gen, schedule=sched, window=2)
    full = baselines.SDPASelfAttention(16, 2, dtype=F64)
    full.load_state_dict({k: v for k, v in layer.state_dict().items()}, strict=True)
    x0, x1 = rand_x(2, 30, 16, gen), rand_x(2, 30, 16, gen)
    y0 = layer(x0)
    assert_close(y0, full(x0))                       # the full step is full attention
    assert_close(layer(x0), full(x0))                # window + residual cached from the same input = full
    # On a new input: window(x1) + (full(x0) - window(x0)), the residual from the last full step.
    q0, k0, v0 = explicit_qkv(layer, x0)
    q1, k1, v1 = explicit_qkv(layer, x1)
    band = band_mask(30, 2)
    resid = masked_attention(q0, k0, v0) - masked_attention(q0, k0, v0, band)
    y2 = layer(x1)
    assert_close(y2, explicit_out(layer, masked_attention(q1, k1, v1, band) + resid))
    assert layer(x0) is y2                          # share_timestep reuses the last output
    with pytest.raises(IndexError, match="outside the schedule"):
        layer(x0)
    layer.reset()
    assert_close(layer(x1), full(x1))


def test_ditfastattn_cfg_sharing_gives_identical_halves(gen):
    sched = schedule(["full", "window_residual"], [True, True])
    layer = make(baselines.DiTFastAttnAttention, 16, 4, gen, schedule=sched, window=0.25)
    full = baselines.SDPASelfAttention(16, 4, dtype=F64)
    full.load_state_dict(layer.state_dict(), strict=True)
    x = rand_x(4, 20, 16, gen)
    y = layer(x)
    assert torch.equal(y[:2], y[2:])
    assert_close(y[2:], full(x[2:]))  # the conditional (second) half is the one computed
    y1 = layer(x)
    assert torch.equal(y1[:2], y1[2:])
    assert_close(y1[2:], full(x[2:]))
    layer.reset()
    with pytest.raises(ValueError, match="batch size 3 is odd"):
        layer(rand_x(3, 20, 16, gen))


def test_ditfastattn_schedule_and_cache_errors(gen):
    with pytest.raises(ValueError, match="first step must be 'full'"):
        schedule(["window_residual"])
    with pytest.raises(ValueError, match="must be drawn from"):
        schedule(["full", "fast"])
    with pytest.raises(ValueError, match="cfg_share has 1 entries"):
        schedule(["full", "full"], [True])
    assert schedule.__name__ and baselines.DiTFastAttnSchedule.periodic(7, 3).modes == (
        "full", "window_residual", "window_residual", "full", "window_residual", "window_residual", "full")
    layer = make(baselines.DiTFastAttnAttention, 8, 2, gen, schedule=schedule(["full", "window_residual"]))
    with pytest.raises(RuntimeError, match="none is cached"):
        layer(rand_x(1, 6, 8, gen), step=1)
    layer(rand_x(1, 6, 8, gen))
    with pytest.raises(ValueError, match="cached a residual has"):
        layer(rand_x(1, 7, 8, gen))
    with pytest.raises(ValueError, match="fractional window must lie in"):
        baselines.DiTFastAttnAttention(8, 2, window=1.5)


def _count_window_calls(monkeypatch):
    from deltaconv_kernels.baselines import ditfastattn

    calls = []
    real = ditfastattn.window_attention_1d
    monkeypatch.setattr(ditfastattn, "window_attention_1d", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("modes,window_passes", [
    (["full", "share_timestep", "full"], 0),              # no window step: no residual is ever computed
    (["full", "share_timestep", "window_residual"], 2),   # step 0 caches it for step 2 (which runs a window pass)
    (["full", "full", "window_residual"], 2),             # only the full step right before the window step
])
def test_ditfastattn_residual_only_when_a_window_step_follows(gen, monkeypatch, modes, window_passes):
    calls = _count_window_calls(monkeypatch)
    layer = make(baselines.DiTFastAttnAttention, 16, 2, gen, schedule=schedule(modes), window=2)
    x = rand_x(1, 30, 16, gen)
    for _ in modes:
        layer(x)
    assert len(calls) == window_passes
    assert layer.schedule.needs_residual(0) == (modes[1:].index("window_residual") < (modes[1:] + ["full"]).index(
        "full") if "window_residual" in modes[1:] else False)


def test_ditfastattn_cfg_sharing_computes_the_chosen_half(gen):
    sched = schedule(["full"], [True])
    layer = make(baselines.DiTFastAttnAttention, 16, 4, gen, schedule=sched, cond_half="first")
    full = baselines.SDPASelfAttention(16, 4, dtype=F64)
    full.load_state_dict(layer.state_dict(), strict=True)
    x = rand_x(4, 20, 16, gen)
    y = layer(x)
    assert torch.equal(y[:2], y[2:])
    assert_close(y[:2], full(x[:2]))  # DiT's [cond, uncond]: the first half is computed
    with pytest.raises(ValueError, match="cond_half must be one of"):
        baselines.DiTFastAttnAttention(8, 2, cond_half="middle")


def test_ditfastattn_window_is_a_token_count_and_the_periodic_plan_is_labelled_ours():
    layer = baselines.DiTFastAttnAttention(8, 2)
    assert layer.window == 64 and "64 tokens" in repr(layer)
    assert "our heuristic" in repr(layer.schedule) and "greedily per layer" in repr(layer.schedule)
    assert "0.125 * N (ours)" in repr(baselines.DiTFastAttnAttention(8, 2, window=0.125))
    plan = baselines.DiTFastAttnSchedule.periodic(None, 3)
    assert [plan.mode(i) for i in range(7)] == ["full", "window_residual", "window_residual"] * 2 + ["full"]
    assert plan.sized(4).modes == ("full", "window_residual", "window_residual", "full")
    assert not plan.sized(4).needs_residual(3)  # the last step: nothing follows
    with pytest.raises(ValueError, match="has 2 steps but the scheduler runs 3"):
        schedule(["full", "window_residual"]).sized(3)
