"""Analytic FLOPs: the paper's Table 1 self-attention column, docs/DESIGN.md §2's roofline count, and a cross-check of
every part `torch.utils.flop_counter.FlopCounterMode` can see (GEMMs, bmm, convolutions) on real layers."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from deltaconv_kernels import DeltaConvBlock, baselines, flops

# Table 1 of the paper, "Self-Attention" rows, GFLOPs as printed, with the image size of each column.
PAPER_SA = {
    "pixart": [((512, 512), 31.42), ((1024, 1024), 241.63), ((2048, 2048), 2821.94), ((4096, 2160), 11741.69),
               ((7680, 4320), 157546.49), ((15360, 8640), 2487706.88)],
    "sd15": [((512, 512), 49.67), ((1024, 1024), 714.08), ((2560, 1440), 8587.98), ((4096, 2160), 49149.21),
             ((7680, 4320), 688821.39), ((15360, 8640), 11010934.11)],
}
SA_CASES = [(model, size, value) for model, rows in PAPER_SA.items() for size, value in rows]


@pytest.mark.parametrize("model,size,paper", SA_CASES, ids=[f"{m}-{s[0]}x{s[1]}" for m, s, _ in SA_CASES])
def test_self_attention_reproduces_table1(model, size, paper):
    ours = flops.method_flops("sdpa", flops.LAYER_SHAPES[model], *size).total / 1e9
    assert f"{ours:.4g}" == f"{paper:.4g}"
    assert abs(ours - paper) <= 0.005 + 1e-9 * paper  # and to the two decimals the paper prints


def test_twelve_paper_values_are_covered():
    assert len(SA_CASES) == 12
    assert [r for (m, _), r in flops.PAPER_TABLE1.items() if m == "pixart"]  # the table module carries them too
    for model, rows in PAPER_SA.items():
        assert list(flops.PAPER_TABLE1[(model, "sdpa")]) == [v for _, v in rows]
        assert list(flops.PAPER_RESOLUTIONS[model]) == [s for s, _ in rows]


def test_deltaconv_matches_design_roofline_count():
    # docs/DESIGN.md §2: FP16, B=2, PixArt at 1024² (N=4096, C=1152, K=13): GEMMs 21.7 GFLOP, depthwise 2.0, total 23.7.
    f = flops.method_flops("deltaconv", flops.PIXART, 1024, 1024)
    assert round(f.linear / 1e9, 1) == 21.7
    assert round(f.conv / 1e9, 1) == 2.0
    assert round((f.linear + f.conv) / 1e9, 1) == 23.7  # §2's total: GEMMs + depthwise, before bias adds
    assert f.bias == 2 * 4096 * (576 + 1152) + 2 * 1152


def test_band_pairs_and_window_keys_by_brute_force():
    for n in (1, 2, 7, 20):
        for w in (0, 1, 3, 25):
            assert flops.band_pairs(n, w) == sum(abs(i - j) <= w for i in range(n) for j in range(n))
    assert flops.window_keys(5, 13) == 5 and flops.window_keys(40, 13) == 13


def test_ditfastattn_modes():
    sdpa = flops.sdpa(8, 8, 64)
    # A full step computes the window pass (for the residual) only when a window step follows before the next
    # full step, as the layer does.
    full = flops.ditfastattn(8, 8, 64, modes=["full"], window=63)
    assert full.attention == sdpa.attention and full.linear == sdpa.linear
    both = flops.ditfastattn(8, 8, 64, modes=["full", "window_residual"], window=63)  # window covering all
    assert both.attention == pytest.approx((2 * sdpa.attention + sdpa.attention) / 2)  # full+window, window
    shared = flops.ditfastattn(8, 8, 64, modes=["full", "share_timestep", "full"], window=63)
    assert shared.attention == pytest.approx(2 * sdpa.attention / 3)
    with pytest.raises(ValueError, match="first step must be 'full'"):  # the layer's rule: nothing to reuse yet
        flops.ditfastattn(8, 8, 64, modes=["share_timestep"])
    halves = flops.ditfastattn(8, 8, 64, modes=["full"], window=63, cfg_share=[True])
    assert halves.total == pytest.approx(full.total / 2)
    assert flops.ditfastattn(8, 8, 64, modes=["full", "share_timestep"]).total == pytest.approx(
        flops.ditfastattn(8, 8, 64, modes=["full"]).total / 2)
    # The window is a token count by default (64, as published); a float is a fraction of N.
    assert flops.ditfastattn(32, 32, 8).attention == flops.ditfastattn(32, 32, 8, window=64).attention
    assert flops.ditfastattn(32, 32, 8, window=0.0625).attention == flops.ditfastattn(32, 32, 8, window=64).attention


def test_errors():
    with pytest.raises(ValueError, match="method must be one of"):
        flops.method_flops("flash", flops.PIXART, 512, 512)
    with pytest.raises(ValueError, match="no pixart tokens"):
        flops.PIXART.tokens(8, 512)


def test_table_printout_states_convfusion_ratio(capsys):
    assert flops.main([]) == 0
    out = capsys.readouterr().out
    assert "ConvFusion" in out and "p/ours" in out
    rows = {(r["model"], r["method"]): r for r in flops.table1_rows()}
    ratio = rows[("pixart", "deltaconv")]["paper_over_ours"]
    assert all(1.2 < r < 1.6 for r in ratio)  # the paper counts ~1.47x more for its ConvFusion (see RESULTS)


# ---- cross-check against FlopCounterMode -------------------------------------------------------------------
def counted(layer, x, **kw) -> dict:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        layer(x, **kw)
    return {str(op).removeprefix("aten."): n for op, n in fc.get_flop_counts()["Global"].items()}


B, H, W, C, HEADS = 2, 6, 10, 16, 2


@pytest.mark.parametrize("name", ["sdpa", "neighborhood", "ditfastattn", "linfusion", "mediator"])
def test_baselines_match_flop_counter(name):
    x = torch.randn(B, H * W, C)
    layer, analytic, visible = {
        # CPU SDPA is invisible to FlopCounterMode: only the projections are checked for SDPA-based layers.
        "sdpa": (baselines.SDPASelfAttention(C, HEADS), flops.sdpa(H, W, C, B), ("linear",)),
        "neighborhood": (baselines.NeighborhoodAttention(C, HEADS, kernel_size=3, impl="reference"),
                         flops.neighborhood(H, W, C, 3, B), ("linear",)),
        "ditfastattn": (baselines.DiTFastAttnAttention(C, HEADS, window=4),
                        flops.ditfastattn(H, W, C, modes=["full"], window=4, batch=B), ("linear",)),
        "linfusion": (baselines.LinFusionAttention(C, HEADS), flops.linfusion(H, W, C, HEADS, B),
                      ("linear", "attention")),
        "mediator": (baselines.MediatorAttention(C, HEADS, mediators=4), flops.mediator(H, W, C, 4, B),
                     ("linear", "attention", "conv")),
    }[name]
    got = counted(layer, x, size=(H, W))
    assert sum(got.values()) == sum(getattr(analytic, part) for part in visible), got


@pytest.mark.parametrize("scales", [(1.0,), (1.0, 0.5), (1.0, 0.5, 0.25)])
def test_deltaconv_matches_flop_counter(scales):
    block = DeltaConvBlock(C, kernel_size=5, scales=scales, backend="torch")
    got = counted(block, torch.randn(B, 9, 7, C))
    analytic = flops.deltaconv(9, 7, C, 5, scales=scales, batch=B)
    assert got["convolution"] == analytic.conv
    # proj_in and pool_proj are addmm, proj_out a baddbmm; the reference's pooling einsum (bmm) is not a GEMM
    # of the block and is left out.
    assert got["addmm"] + got["baddbmm"] == analytic.linear


def test_ditfastattn_single_step_as_the_benchmark_times_it():
    # The latency benchmark times one compressed step; its FLOPs column is that step's, not a plan's mean.
    h, w = flops.PIXART.tokens(512, 512)
    c = flops.PIXART.channels
    step = flops.method_flops("ditfastattn", flops.PIXART, 512, 512, ditfastattn_mode="window_residual")
    assert step == flops.ditfastattn_step(h, w, c, "window_residual")
    assert step.total < flops.ditfastattn_step(h, w, c, "full").total
    assert flops.ditfastattn_step(h, w, c, "share_timestep").total == 0
    with pytest.raises(ValueError, match="mode must be one of"):
        flops.ditfastattn_step(h, w, c, "window")


# ---- executed FLOPs: the pairs each implementation computes, counted by brute force ------------------------------
def _sdpa_pairs(monkeypatch, module):
    """Record the (query, key) pairs of every SDPA call `module` makes (a boolean mask does not skip any)."""
    calls = []
    real = module.F.scaled_dot_product_attention

    def counting(q, k, v, **kw):
        calls.append(q.shape[:-1].numel() * k.shape[-2])
        return real(q, k, v, **kw)

    monkeypatch.setattr(module.F, "scaled_dot_product_attention", counting)
    return calls


def _ideal_window_pairs(h, w, k):
    """Allowed (query, key) pairs of the K x K window with borders shifted inward, by enumeration."""
    start = lambda i, n: min(max(i - k // 2, 0), max(n - k, 0))  # noqa: E731
    return sum(start(i, h) <= r < start(i, h) + k and start(j, w) <= c < start(j, w) + k
               for i in range(h) for j in range(w) for r in range(h) for c in range(w))


def _dense_block_pairs(mask_mod, n, block=128):
    """Pairs in the blocks create_block_mask lists (dense mask), each block whole, cut at the sequence end."""
    from torch.nn.attention.flex_attention import create_block_mask

    dense = create_block_mask(mask_mod, None, None, n, n, device="cpu", BLOCK_SIZE=block).to_dense()[0, 0]
    size = lambda i: min(block, n - i * block)  # noqa: E731
    return sum(size(qb) * size(kb) for qb, kb in torch.nonzero(dense).tolist())


@pytest.mark.parametrize("h,w,k", [(6, 10, 3), (13, 9, 13), (1, 40, 5), (17, 23, 7), (3, 200, 5), (20, 30, 25)])
def test_neighborhood_executed_pairs_by_brute_force(monkeypatch, h, w, k):
    from deltaconv_kernels.baselines import flex, neighborhood

    assert flops.neighborhood_pairs(h, w, k) == flops.neighborhood_pairs(h, w, k, "natten") == \
        _ideal_window_pairs(h, w, k)
    calls = _sdpa_pairs(monkeypatch, neighborhood)
    q = torch.zeros(2, 3, h * w, 4)
    neighborhood.neighborhood_attention(q, q, q, (h, w), k, chunk_bytes=1)  # one tile band per SDPA call
    assert flops.neighborhood_pairs(h, w, k, "reference") == sum(calls) // (2 * 3)
    assert flops.neighborhood_pairs(h, w, k, "flex") == _dense_block_pairs(flex.neighborhood_mask_mod(h, w, k), h * w)


@pytest.mark.parametrize("n,half_width", [(23, 3), (300, 64), (1000, 64), (700, 512), (50, 100), (200, 0)])
def test_window_executed_pairs_by_brute_force(monkeypatch, n, half_width):
    from deltaconv_kernels.baselines import ditfastattn, flex

    calls = _sdpa_pairs(monkeypatch, ditfastattn)
    q = torch.zeros(2, 3, n, 4)
    ditfastattn.window_attention_1d(q, q, q, half_width)
    assert flops.window_pairs(n, half_width, "reference") == sum(calls) // (2 * 3)
    assert flops.window_pairs(n, half_width, "flex") == _dense_block_pairs(flex.band_mask_mod(half_width), n)
    assert flops.window_pairs(n, half_width) == flops.band_pairs(n, half_width)


@pytest.mark.parametrize("model", ["pixart", "sd15"])
@pytest.mark.parametrize("size", [(512, 512), (1024, 1024), (2160, 3840), (1440, 2560)])
def test_executed_at_least_ideal_and_equal_where_nothing_is_padded(model, size):
    shape = flops.LAYER_SHAPES[model]
    for impl in ("natten", "flex", "reference"):
        ideal = flops.method_flops("neighborhood", shape, *size)
        executed = flops.executed_flops("neighborhood", shape, *size, impl=impl)
        assert executed.attention >= ideal.attention and executed.linear == ideal.linear
        assert (executed == ideal) == (impl == "natten")
    for impl in ("flex", "reference"):
        for mode in ("window_residual", None):
            ideal = flops.method_flops("ditfastattn", shape, *size, ditfastattn_mode=mode)
            executed = flops.executed_flops("ditfastattn", shape, *size, impl=impl, ditfastattn_mode=mode)
            assert executed.attention > ideal.attention and executed.linear == ideal.linear
        full = dict(ditfastattn_mode="full")
        assert flops.executed_flops("ditfastattn", shape, *size, impl=impl, **full) == \
            flops.method_flops("ditfastattn", shape, *size, **full)  # full attention, no window pass
    for method in ("sdpa", "linfusion", "mediator", "deltaconv"):
        ideal = flops.method_flops(method, shape, *size)
        assert flops.executed_flops(method, shape, *size, impl="any backend") == ideal


def test_executed_window_step_counts_the_timed_window_pass():
    h, w = flops.PIXART.tokens(1024, 1024)
    c, n = flops.PIXART.channels, h * w
    step = flops.executed_flops("ditfastattn", flops.PIXART, 1024, 1024, impl="reference",
                                ditfastattn_mode="window_residual")
    assert step.attention == 2 * 4 * c * flops.window_pairs(n, 64, "reference")  # batch 2, w = 64 tokens
    # the reference: blocks of 64 queries against up to 64 + 2 * 64 keys, ~1.5x the band
    assert 1.45 < flops.window_pairs(n, 64, "reference") / flops.band_pairs(n, 64) < 1.5


def test_executed_flops_errors():
    with pytest.raises(ValueError, match="impl must name the neighborhood implementation"):
        flops.executed_flops("neighborhood", flops.PIXART, 512, 512)
    with pytest.raises(ValueError, match="impl must be one of"):
        flops.executed_flops("neighborhood", flops.PIXART, 512, 512, impl="triton")
    with pytest.raises(ValueError, match="window_impl must be one of"):
        flops.executed_flops("ditfastattn", flops.PIXART, 512, 512, impl="natten")
    with pytest.raises(ValueError, match="method must be one of"):
        flops.executed_flops("flash", flops.PIXART, 512, 512, impl="flex")
