"""The attention baselines' math on small inputs, each against an explicit O(N^2) formulation written here from
the formulas (dense scores, explicit masks, explicit pooling/conv), plus their bad-input errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from deltaconv_kernels import baselines
from deltaconv_kernels.testing import DTYPES, assert_close

F64 = torch.float64


def randomize(layer: torch.nn.Module, gen: torch.Generator) -> torch.nn.Module:
    """Random non-zero values for every parameter (default inits leave biases and LayerNorm trivial)."""
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64) * (0.5 / math.sqrt(max(p.shape[-1], 1))) + 0.01)
    return layer


def make(cls, dim, heads, gen, **kw):
    return randomize(cls(dim, heads, dtype=F64, **kw), gen).eval()


def explicit_qkv(layer, x):
    b, n, c = x.shape
    split = lambda t: t.view(b, n, layer.heads, c // layer.heads).transpose(1, 2)  # noqa: E731
    return split(layer.to_q(x)), split(layer.to_k(x)), split(layer.to_v(x))


def explicit_out(layer, y):
    b, h, n, d = y.shape
    return layer.to_out[0](y.transpose(1, 2).reshape(b, n, h * d))


def masked_attention(q, k, v, mask=None):
    """softmax(Q K^T / sqrt(d) masked) V with the full N x N score matrix."""
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return s.softmax(-1) @ v


def neighborhood_mask(height, width, k):
    """[N, N] mask: query (i, j) sees keys in rows [ri, ri + min(K, H)) and cols [cj, cj + min(K, W)) with the
    window start clamped into the map (NATTEN's definition), written with plain Python loops."""
    def start(i, length):
        return min(max(i - k // 2, 0), max(length - k, 0))
    kh, kw = min(k, height), min(k, width)
    m = torch.zeros(height * width, height * width, dtype=torch.bool)
    for i in range(height):
        for j in range(width):
            r0, c0 = start(i, height), start(j, width)
            for r in range(r0, r0 + kh):
                m[i * width + j, r * width + c0:r * width + c0 + kw] = True
    return m


def rand_x(b, n, c, gen, dtype=F64):
    return torch.randn(b, n, c, generator=gen, dtype=F64).to(dtype)


# ---- SDPA ---------------------------------------------------------------------------------------------------
def test_sdpa_matches_explicit_attention(gen):
    layer = make(baselines.SDPASelfAttention, 24, 3, gen)
    x = rand_x(2, 35, 24, gen)
    q, k, v = explicit_qkv(layer, x)
    assert_close(layer(x), explicit_out(layer, masked_attention(q, k, v)))


# ---- neighborhood -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,k", [((5, 7), 7), ((6, 6), 9), ((1, 9), 11)])
def test_neighborhood_window_covering_map_equals_full_attention(gen, size, k):
    na = make(baselines.NeighborhoodAttention, 16, 2, gen, kernel_size=k, impl="reference")
    full = baselines.SDPASelfAttention(16, 2, dtype=F64)
    full.load_state_dict(na.state_dict(), strict=True)
    x = rand_x(2, size[0] * size[1], 16, gen)
    assert_close(na(x, size=size), full(x))


@settings(max_examples=12, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), k=st.sampled_from([1, 3, 5, 7]), heads=st.sampled_from([1, 2]),
       tile=st.sampled_from([None, 2, 3]), seed=st.integers(0, 2**16))
def test_neighborhood_reference_matches_explicit_mask(h, w, k, heads, tile, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k_, v = (torch.randn(2, heads, h * w, 4, generator=gen, dtype=F64) for _ in range(3))
    out = baselines.neighborhood_attention(q, k_, v, (h, w), k, tile=tile, chunk_bytes=1)  # 1 band per chunk
    assert_close(out, masked_attention(q, k_, v, neighborhood_mask(h, w, k)))


def test_neighborhood_layer_matches_explicit_and_spatial_size_attribute(gen):
    layer = make(baselines.NeighborhoodAttention, 12, 3, gen, kernel_size=3, impl="reference")
    x = rand_x(1, 13 * 9, 12, gen)
    q, k, v = explicit_qkv(layer, x)
    expected = explicit_out(layer, masked_attention(q, k, v, neighborhood_mask(13, 9, 3)))
    assert_close(layer(x, size=(13, 9)), expected)
    layer.spatial_size = (13, 9)
    assert_close(layer(x), expected)


def test_neighborhood_natten_forced_without_natten_says_why():
    reason = baselines.natten_status()
    if reason is None:
        pytest.skip("NATTEN is installed here; the missing-NATTEN error cannot be exercised")
    with pytest.raises(RuntimeError, match="NATTEN is not installed"):
        baselines.NeighborhoodAttention(8, 2, kernel_size=3, impl="natten")


# ---- DiTFastAttn --------------------------------------------------------------------------------------------
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


# ---- LinFusion ----------------------------------------------------------------------------------------------
def test_linfusion_matches_explicit_quadratic_form(gen):
    layer = make(baselines.LinFusionAttention, 20, 4, gen)
    x = rand_x(2, 33, 20, gen)
    b, n, c = x.shape
    split = lambda t: t.view(b, n, 4, 5).transpose(1, 2)  # noqa: E731
    q = split(layer.to_q(x + layer.phi_q(x)))
    k = split(layer.to_k(x + layer.phi_k(x)))
    v = split(layer.to_v(x))
    qp, kp = F.elu(q) + 1, F.elu(k) + 1
    a = qp @ kp.transpose(-1, -2)                               # [B, h, N, N], the O(N^2) form
    y = (a @ v / n) / (a.mean(-1, keepdim=True) + 1e-4)
    assert_close(layer(x), explicit_out(layer, y))
    # phi is Linear -> LayerNorm -> LeakyReLU -> Linear
    assert [type(m).__name__ for m in layer.phi_q] == ["Linear", "LayerNorm", "LeakyReLU", "Linear"]


# ---- mediator -----------------------------------------------------------------------------------------------
def test_mediator_matches_explicit_formulation(gen):
    height, width, grid, c, heads = 6, 8, (3, 2), 12, 3
    layer = make(baselines.MediatorAttention, c, heads, gen, mediators=grid)
    x = rand_x(2, height * width, c, gen)
    q, k, v = explicit_qkv(layer, x)
    d = c // heads
    # Mediators: mean of each 2 x 4 block of the query map (6x8 -> 3x2), block by block.
    qmap = q.reshape(2, heads, height, width, d)
    t = torch.stack([qmap[:, :, 2 * i:2 * i + 2, 4 * j:4 * j + 4].mean(dim=(2, 3))
                     for i in range(3) for j in range(2)], dim=2)  # [B, h, 6, d]
    s = d ** -0.5
    v_t = (t @ k.transpose(-1, -2) * s).softmax(-1) @ v
    y = (q @ t.transpose(-1, -2) * s).softmax(-1) @ v_t
    # 3x3 depthwise conv of V with zero padding, as explicit shifted sums.
    vmap = v.transpose(1, 2).reshape(2, height, width, c)
    padded = F.pad(vmap, (0, 0, 1, 1, 1, 1))
    w = layer.dwc.weight[:, 0]  # [C, 3, 3]
    conv = sum(padded[:, a:a + height, b:b + width, :] * w[:, a, b] for a in range(3) for b in range(3))
    conv = conv + layer.dwc.bias
    local = conv.reshape(2, height * width, heads, d).transpose(1, 2)
    assert_close(layer(x, size=(height, width)), explicit_out(layer, y + local))


def test_mediator_arguments():
    assert baselines.MediatorAttention(8, 2, mediators=16).grid == (4, 4)
    with pytest.raises(ValueError, match="perfect square"):
        baselines.MediatorAttention(8, 2, mediators=10)
    with pytest.raises(ValueError, match="pair of positive ints"):
        baselines.MediatorAttention(8, 2, mediators=(4, 0))


# ---- every layer: dtypes, non-contiguous input, bad input ---------------------------------------------------
LAYERS = {
    "sdpa": lambda: baselines.SDPASelfAttention(16, 2),
    "neighborhood": lambda: baselines.NeighborhoodAttention(16, 2, kernel_size=3, impl="reference"),
    "ditfastattn": lambda: baselines.DiTFastAttnAttention(16, 2, window=3),
    "linfusion": lambda: baselines.LinFusionAttention(16, 2),
    "mediator": lambda: baselines.MediatorAttention(16, 2, mediators=4),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_layers_in_each_dtype_match_fp64(gen, name, dtype):
    layer = randomize(LAYERS[name]().double(), gen).eval()
    big = rand_x(1, 7 * 5, 40, gen)
    x64 = big[..., 3:19]                                      # non-contiguous [B, N, C] view
    assert not x64.is_contiguous()
    expected = layer(x64, size=(7, 5))
    if name == "ditfastattn":
        layer.reset()
    low = layer.to(dtype)
    assert_close(low(x64.to(dtype), size=(7, 5)), expected, dtype=dtype)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_bad_input_errors(name):
    layer = LAYERS[name]()
    x = torch.randn(2, 12, 16)
    with pytest.raises(ValueError, match=r"\[B, N, C\]"):
        layer(torch.randn(12, 16), size=(3, 4))
    with pytest.raises(ValueError, match="expected dim=16"):
        layer(torch.randn(2, 12, 15), size=(3, 4))
    with pytest.raises(ValueError, match="N=12 tokens"):
        layer(x, size=(5, 3))
    with pytest.raises(ValueError, match="encoder_hidden_states must be None"):
        layer(x, torch.randn(2, 4, 16), size=(3, 4))
    with pytest.raises(ValueError, match="attention_mask"):
        layer(x, attention_mask=torch.ones(2, 12, dtype=torch.bool), size=(3, 4))
    with pytest.raises(TypeError, match="dtype torch.float64"):
        layer(x.double(), size=(3, 4))
    with pytest.raises(TypeError, match="unexpected keyword"):
        layer(x, size=(3, 4), scale=1.0)
    if layer.needs_size:
        with pytest.raises(ValueError, match="needs the spatial size"):
            layer(x)
    with pytest.raises(ValueError, match="heads must be a positive int dividing dim"):
        type(layer)(16, 3)


def test_neighborhood_kernel_size_must_be_odd():
    with pytest.raises(ValueError, match="positive odd int"):
        baselines.NeighborhoodAttention(8, 2, kernel_size=4)


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
