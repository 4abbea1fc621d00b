"""The flex_attention (and NATTEN, where installed) paths of the windowed baselines against their references: the
block masks built from `window_blocks` against `create_block_mask` on the dense mask_mod, the compiled outputs
against the fp64 references (fp32 tight, bf16 by the tolerance table), and the choice of implementation.

Each compiled shape costs a few seconds of inductor time on a CI core, so the compiled cases are few and small."""

from __future__ import annotations

import pytest
import torch

from deltaconv_kernels import baselines
from deltaconv_kernels.baselines import ditfastattn, flex, neighborhood, window_blocks
from deltaconv_kernels.baselines.base import select_impl
from deltaconv_kernels.testing import assert_close

F64 = torch.float64
FLEX_REASON = flex.flex_status("cpu")
needs_flex = pytest.mark.skipif(FLEX_REASON is not None, reason=f"compiled flex_attention: {FLEX_REASON}")


def dense_blocks(mask_mod, n, block=window_blocks.FLEX_BLOCK):
    """(listed, full) block sets per query block from create_block_mask on the dense N x N mask."""
    from torch.nn.attention.flex_attention import create_block_mask

    bm = create_block_mask(mask_mod, None, None, n, n, device="cpu", BLOCK_SIZE=block)
    dense = bm.to_dense()[0, 0]  # [q blocks, kv blocks]: partial or full
    full = torch.zeros_like(dense)
    if bm.full_kv_num_blocks is not None:
        for qb in range(dense.shape[0]):
            full[qb, bm.full_kv_indices[0, 0, qb, :bm.full_kv_num_blocks[0, 0, qb]]] = 1
    as_sets = lambda m: [set(torch.nonzero(row).flatten().tolist()) for row in m]  # noqa: E731
    return as_sets(dense), as_sets(full)


# ---- block masks: the geometry against create_block_mask --------------------------------------------------------
NEIGHBORHOOD_MAPS = [(5, 7, 3), (20, 30, 7), (1, 300, 5), (300, 1, 5), (17, 9, 13), (3, 3, 13), (12, 20, 25),
                     (3, 200, 5), (40, 33, 13)]


@pytest.mark.parametrize("h,w,k", NEIGHBORHOOD_MAPS)
def test_neighborhood_blocks_are_those_of_the_dense_mask(h, w, k):
    listed, full = dense_blocks(flex.neighborhood_mask_mod(h, w, k), h * w)
    partial_got, full_got = window_blocks.neighborhood_flex_blocks(h, w, k)
    assert [set(p) | set(f) for p, f in zip(partial_got, full_got)] == listed
    assert all(not set(p) & set(f) for p, f in zip(partial_got, full_got))
    assert all(set(f) <= e for f, e in zip(full_got, full))  # a block marked full is full
    # the BlockMask handed to flex_attention holds exactly these blocks
    bm = flex.neighborhood_block_mask(h, w, k)
    assert [set(torch.nonzero(r).flatten().tolist()) for r in bm.to_dense()[0, 0]] == listed


@pytest.mark.parametrize("n,half_width", [(10, 3), (300, 64), (1000, 64), (1000, 512), (700, 0), (50, 100)])
def test_band_blocks_are_those_of_the_dense_mask(n, half_width):
    listed, full = dense_blocks(flex.band_mask_mod(half_width), n)
    partial_got, full_got = window_blocks.band_flex_blocks(n, half_width)
    assert [set(f) for f in full_got] == full
    assert [set(p) | set(f) for p, f in zip(partial_got, full_got)] == listed


def test_block_masks_are_cached_per_size_window_and_device():
    a = flex.neighborhood_block_mask(9, 11, 5, "cpu")
    assert flex.neighborhood_block_mask(9, 11, 5, torch.device("cpu")) is a
    assert flex.neighborhood_block_mask(9, 11, 3, "cpu") is not a
    assert flex.band_block_mask(99, 4) is flex.band_block_mask(99, 4, "cpu")


def test_big_map_block_mask_is_built_from_the_geometry():
    # 4K PixArt (3840x2160 px -> 135 x 240 tokens): the dense mask would be N^2 = 1.05e9 booleans; the block
    # lists are O(blocks) and quick.
    bm = flex.neighborhood_block_mask(135, 240, 13)
    assert tuple(bm.kv_num_blocks.shape) == (1, 1, 254) and bm.seq_lengths == (32400, 32400)


# ---- compiled outputs against the references ------------------------------------------------------------------
def qkv(b, heads, n, d, gen):
    return [torch.randn(b, heads, n, d, generator=gen, dtype=F64) for _ in range(3)]


@needs_flex
@pytest.mark.parametrize("b,h,w,k", [(2, 17, 9, 13),   # K > the map's width, two query blocks, B = 2
                                     (1, 1, 40, 5),    # a thin map
                                     (1, 3, 200, 5)])  # rows wider than a block, odd sizes
def test_neighborhood_flex_matches_reference_fp32(gen, b, h, w, k):
    q, k_, v = qkv(b, 2, h * w, 8, gen)
    expected = neighborhood.neighborhood_attention(q, k_, v, (h, w), k)
    out = neighborhood.neighborhood_attention_flex(*(t.float() for t in (q, k_, v)), (h, w), k)
    assert out.dtype == torch.float32
    assert_close(out, expected)


@needs_flex
@pytest.mark.parametrize("b,n,half_width", [(2, 300, 64), (1, 50, 100)])  # the published w; a band covering all
def test_window_flex_matches_reference_fp32(gen, b, n, half_width):
    q, k, v = qkv(b, 2, n, 8, gen)
    expected = ditfastattn.window_attention_1d(q, k, v, half_width)
    assert_close(ditfastattn.window_attention_1d(*(t.float() for t in (q, k, v)), half_width, impl="flex"), expected)


def _pair(cls, gen, dtype, **kw):
    """A layer with the given kwargs in `dtype` and its fp64 reference twin with the same weights."""
    ref = cls(16, 2, dtype=F64, **{**kw, **{key: "reference" for key in kw if key.endswith("impl")}})
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64) * 0.3 + 0.01)
    layer = cls(16, 2, dtype=dtype, **kw)
    layer.load_state_dict(ref.state_dict())
    return layer, ref


@needs_flex
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_neighborhood_layer_flex_matches_reference(gen, dtype):
    layer, ref = _pair(baselines.NeighborhoodAttention, gen, dtype, kernel_size=25, impl="flex")  # K > both sides
    assert layer.impl == "flex" and "impl='flex'" in repr(layer)
    x = torch.randn(2, 12 * 20, 16, generator=gen, dtype=F64)
    with torch.no_grad():
        assert_close(layer(x.to(dtype), size=(12, 20)), ref(x, size=(12, 20)), dtype=dtype)


@needs_flex
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ditfastattn_layer_flex_window_matches_reference(gen, dtype):
    plan = baselines.DiTFastAttnSchedule(["full", "window_residual"])
    layer, ref = _pair(baselines.DiTFastAttnAttention, gen, dtype, schedule=plan, window=5, window_impl="flex")
    assert layer.window_impl == "flex" and ref.window_impl == "reference" and "window_impl='flex'" in repr(layer)
    x0, x1 = (torch.randn(1, 150, 16, generator=gen, dtype=F64) for _ in range(2))
    with torch.no_grad():
        for x in (x0, x1):  # the full step (and its residual's window pass), then a window step
            assert_close(layer(x.to(dtype)), ref(x), dtype=dtype)


@needs_flex
def test_replace_attention_with_flex_neighborhood_reproduces_the_unet():
    from tiny_models import tiny_unet, unet_inputs

    from deltaconv_kernels.integrations.diffusers import replace_attention

    model = tiny_unet("sd15", seed=3)
    inputs = unet_inputs(model, height=16, width=12)
    with torch.no_grad():
        expected = model(*inputs).sample
        replace_attention(model, "neighborhood", kernel_size=31, impl="flex")  # the window covers every map
        assert {m.impl for m in model.modules() if isinstance(m, baselines.NeighborhoodAttention)} == {"flex"}
        assert_close(model(*inputs).sample, expected, torch.float32, "flex neighborhood U-Net output")


@pytest.mark.skipif(neighborhood.natten_status() is not None, reason=f"{neighborhood.natten_status()}")
def test_natten_matches_reference(gen):
    layer, ref = _pair(baselines.NeighborhoodAttention, gen, torch.float32, kernel_size=5, impl="natten")
    x = torch.randn(2, 11 * 13, 16, generator=gen, dtype=F64)
    with torch.no_grad():
        assert_close(layer(x.float(), size=(11, 13)), ref(x, size=(11, 13)))


# ---- choosing the implementation ----------------------------------------------------------------------------
def test_default_choice_on_the_cpu_and_its_reasons():
    layer = baselines.NeighborhoodAttention(8, 2, kernel_size=3)
    natten = neighborhood.natten_status()
    # On the CPU the tiled reference goes before flex (measured faster here; see flex.preferred_order).
    assert layer.impl == ("natten" if natten is None else "reference")
    assert layer.impl_reasons == ({} if natten is None else {"natten": natten})
    window = baselines.DiTFastAttnAttention(8, 2)
    assert window.window_impl == "reference" and window.window_impl_reasons == {}
    assert list(neighborhood.impl_statuses("cpu")) == ["natten", "reference", "flex"]
    assert list(neighborhood.impl_statuses("cuda")) == ["natten", "flex", "reference"]
    assert list(ditfastattn.window_impl_statuses("cuda")) == ["flex", "reference"]


def test_choice_skips_what_cannot_run_and_says_why():
    statuses = {"natten": lambda: "NATTEN is not installed", "flex": lambda: "no C++ compiler",
                "reference": lambda: None}
    assert select_impl(None, statuses) == ("reference", {"natten": "NATTEN is not installed",
                                                         "flex": "no C++ compiler"})
    with pytest.raises(RuntimeError, match="impl='flex' was forced but no C[+][+] compiler"):
        select_impl("flex", statuses)
    with pytest.raises(RuntimeError, match="no impl can run: a: x"):
        select_impl(None, {"a": lambda: "x"})
    if not torch.cuda.is_available():
        impl, reasons = select_impl(None, neighborhood.impl_statuses("cuda"))
        assert impl == "reference" and reasons["flex"] == "CUDA is not available"


def test_forcing_an_unavailable_or_unknown_impl_raises(monkeypatch):
    monkeypatch.setattr(flex, "flex_status", lambda device="cpu": "torch.compile cannot run here")
    with pytest.raises(RuntimeError, match="impl='flex' was forced but torch.compile cannot run here"):
        baselines.NeighborhoodAttention(8, 2, kernel_size=3, impl="flex")
    with pytest.raises(RuntimeError, match="window_impl='flex' was forced but torch.compile cannot run here"):
        baselines.DiTFastAttnAttention(8, 2, window_impl="flex")
    with pytest.raises(ValueError, match=r"impl must be one of \('natten', 'reference', 'flex'\) or None"):
        baselines.NeighborhoodAttention(8, 2, kernel_size=3, impl="triton")
    with pytest.raises(ValueError, match="window_impl must be one of"):
        baselines.DiTFastAttnAttention(8, 2, window_impl="sdpa")
    with pytest.raises(ValueError, match="impl must be one of"):
        ditfastattn.window_attention_1d(*(torch.zeros(1, 1, 4, 2) for _ in range(3)), 1, impl="natten")


def test_flex_attend_refuses_a_device_it_cannot_run_on(monkeypatch):
    monkeypatch.setattr(flex, "flex_status", lambda device="cpu": "no C++ compiler")
    q = torch.zeros(1, 1, 4, 2)
    with pytest.raises(RuntimeError, match="flex_attention cannot run on cpu: no C[+][+] compiler"):
        flex.flex_attend(q, q, q, flex.band_block_mask(4, 1))


@needs_flex
def test_flex_refuses_to_run_eagerly_past_the_recompile_limit(gen, monkeypatch):
    q, k, v = (t.float() for t in qkv(1, 2, 50, 8, gen))  # the shape of a case above: compiled once
    flex.flex_attend(q, k, v, flex.band_block_mask(50, 100))
    monkeypatch.setattr(flex, "RECOMPILE_LIMIT", 1)
    with pytest.raises(RuntimeError, match="compiled for 1 shapes in this process already"):
        flex.flex_attend(q[..., :23, :], k[..., :23, :], v[..., :23, :], flex.band_block_mask(23, 3))


def test_flex_on_the_cpu_refuses_gradients_clearly():
    layer = baselines.NeighborhoodAttention(8, 2, kernel_size=3, impl="flex")
    with pytest.raises(RuntimeError, match="no backward on the CPU.*torch.no_grad"):
        layer(torch.randn(1, 9, 8), size=(3, 3))


def test_flex_status_names_the_missing_piece():
    assert flex.flex_status("meta").startswith("compiled flex_attention is only used on cpu and cuda")


@needs_flex
@pytest.mark.parametrize("n", [24, 40])  # N % 16 == 8: inductor's CPU kernel read unwritten memory there, unpadded
def test_flex_is_repeatable_where_the_cpu_kernel_needs_padding(gen, n):
    assert flex.padded_length(n, "cpu") == n + 8 and flex.padded_length(n, "cuda") == n
    q, k, v = qkv(1, 2, n, 8, gen)
    expected = ditfastattn.window_attention_1d(q, k, v, 4)
    for _ in range(3):  # the unpadded kernel was wrong on some calls only
        assert_close(ditfastattn.window_attention_1d(*(t.float() for t in (q, k, v)), 4, impl="flex"), expected)
