"""Attention-locality analysis: known-answer tests of the measures, capture correctness against an
explicit softmax(QK^T) and against the layer's own output, and an end-to-end CLI run whose kernel sizes feed
`convert`."""

from __future__ import annotations

import json
import math
from argparse import Namespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("diffusers", reason="the attention-locality analysis captures diffusers models")
pytest.importorskip("safetensors", reason="the attention-locality analysis captures diffusers models")

from tiny_models import pixart_inputs, tiny_pixart, tiny_unet, unet_inputs  # noqa: E402

from deltaconv_kernels.analysis import locality  # noqa: E402
from deltaconv_kernels.analysis.aggregate import LocalityAccumulator  # noqa: E402
from deltaconv_kernels.analysis.capture import AttentionCapture, CapturedMaps, query_sample, self_attention_layers  # noqa: E402
from deltaconv_kernels.analysis.pipeline import AnalysisSettings, analyze, latent_size_from_resolution  # noqa: E402
from deltaconv_kernels.analysis.plots import short_name  # noqa: E402
from deltaconv_kernels.analysis.recommend import KernelRule, nearest_odd, recommend_kernel_sizes  # noqa: E402
from deltaconv_kernels.testing import assert_close  # noqa: E402

F64 = torch.float64


def _clipped_area(h, w, qy, qx, k):
    r = (k - 1) // 2
    return (min(qy + r, h - 1) - max(qy - r, 0) + 1) * (min(qx + r, w - 1) - max(qx - r, 0) + 1)


# ---------------------------------------------------------------- measures with known answers

@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 13), w=st.integers(1, 13), data=st.data())
def test_uniform_map_mass_is_clipped_area_over_n(h, w, data):
    s = data.draw(st.integers(1, 4))
    qy = torch.tensor(data.draw(st.lists(st.integers(0, h - 1), min_size=s, max_size=s)))
    qx = torch.tensor(data.draw(st.lists(st.integers(0, w - 1), min_size=s, max_size=s)))
    ks = locality.odd_kernel_sizes(h, w)
    maps = torch.full((2, s, h, w), 1.0 / (h * w))  # two "heads" of uniform rows
    mass = locality.score_mass(maps, qy, qx, ks)
    expected = torch.tensor([[_clipped_area(h, w, y, x, k) / (h * w) for k in ks]
                             for y, x in zip(qy.tolist(), qx.tolist())], dtype=F64).expand(2, s, len(ks))
    assert_close(mass, expected, F64, "uniform M(k)")
    assert_close(mass[..., -1], torch.ones(2, s, dtype=F64), F64, "M at the full window")


@settings(max_examples=15, deadline=None)
@given(h=st.integers(1, 11), w=st.integers(1, 11), data=st.data())
def test_window_sums_match_brute_force(h, w, data):
    qy = data.draw(st.integers(0, h - 1))
    qx = data.draw(st.integers(0, w - 1))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    maps = torch.rand(1, h, w, generator=gen, dtype=F64) + 0.1
    ks = locality.odd_kernel_sizes(h, w)
    got = locality.window_sums(maps, torch.tensor([qy]), torch.tensor([qx]), ks)[0]
    want = []
    for k in ks:
        r = (k - 1) // 2
        want.append(maps[0, max(qy - r, 0):qy + r + 1, max(qx - r, 0):qx + r + 1].sum())
    assert_close(got, torch.stack(want), F64, "window sums")


def test_delta_at_query_has_mass_one_for_every_k():
    h, w = 9, 6
    qy, qx = torch.tensor([0, 4, 8, 3]), torch.tensor([0, 2, 5, 5])
    maps = torch.zeros(3, 4, h, w)
    maps[:, torch.arange(4), qy, qx] = 1.0
    mass = locality.score_mass(maps, qy, qx, locality.odd_kernel_sizes(h, w))
    assert_close(mass, torch.ones_like(mass), F64, "delta M(k)")
    assert locality.effective_receptive_field(locality.odd_kernel_sizes(h, w), mass[0, 0].tolist()) == 1


@pytest.mark.parametrize("sigma", [1.0, 2.5, 4.0, 6.5])
def test_gaussian_erf_matches_analytic(sigma):
    # Continuous isotropic Gaussian: mass in a k x k square = erf(k / (2 sqrt(2) sigma))^2, so the analytic ERF
    # is the smallest odd k >= 2 sqrt(2) sigma erfinv(sqrt(0.8)). The map is large enough that nothing is clipped.
    n = 81
    c = n // 2
    yy, xx = torch.meshgrid(torch.arange(n, dtype=F64), torch.arange(n, dtype=F64), indexing="ij")
    g = torch.exp(-((yy - c) ** 2 + (xx - c) ** 2) / (2 * sigma**2))
    g = (g / g.sum())[None].float()
    ks = locality.odd_kernel_sizes(n, n, max_kernel=61)
    mass = locality.score_mass(g, torch.tensor([c]), torch.tensor([c]), ks)[0]
    k_star = 2 * math.sqrt(2) * sigma * torch.erfinv(torch.tensor(math.sqrt(0.8), dtype=F64)).item()
    analytic = next(k for k in ks if k >= k_star)
    measured = locality.effective_receptive_field(ks, mass.tolist(), 0.8)
    assert abs(measured - analytic) <= 2, (sigma, measured, analytic, k_star)


def test_highpass_removes_constant_and_keeps_a_cosine_scaled_by_the_filter():
    h, w = 12, 16
    const = torch.full((2, h, w), 0.37)
    assert locality.highpass(const, cutoff=0.1, order=2).abs().max().item() <= 1e-14
    # cos at 1/4 cycle per pixel along x: the filter scales it by H(0.25) and removes the constant offset.
    x = torch.arange(w, dtype=F64)
    wave = torch.cos(2 * math.pi * 0.25 * x).expand(h, w)
    gain = 0.25**4 / (0.25**4 + 0.1**4)
    assert_close(locality.highpass(1.0 + wave, 0.1, 2), gain * wave, F64, "filtered cosine")
    # a constant map has no high-frequency content: excluded (NaN), not counted as mass
    mass, valid = locality.highpass_mass(const, torch.tensor([0, 5]), torch.tensor([0, 7]), [1, 3], 0.1, 2)
    assert not valid.any() and torch.isnan(mass).all()


def _numpy_highpass(a, cutoff, order):
    """The filter's definition on the full fft2 grid, written independently of `locality` (numpy)."""
    import numpy as np
    h, w = a.shape
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    radius = np.hypot(fy, fx)
    with np.errstate(divide="ignore"):
        gain = np.where(radius == 0, 0.0, 1.0 / (1.0 + (cutoff / radius) ** (2 * order)))
    return torch.from_numpy(np.fft.ifft2(np.fft.fft2(a.numpy()) * gain).real)


@settings(max_examples=15, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), cutoff=st.floats(0.02, 0.6), order=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_highpass_matches_numpy_reference(h, w, cutoff, order, seed):
    a = torch.rand(h, w, generator=torch.Generator().manual_seed(seed), dtype=F64)
    assert_close(locality.highpass(a[None], cutoff, order)[0], _numpy_highpass(a, cutoff, order), F64, "high-pass")


def test_highpass_mass_of_a_delta():
    h, w, qy, qx = 15, 12, 4, 9
    d = torch.zeros(1, h, w)
    d[0, qy, qx] = 1.0
    ks = locality.odd_kernel_sizes(h, w)
    mass, valid = locality.highpass_mass(d, torch.tensor([qy]), torch.tensor([qx]), ks, cutoff=0.1, order=2)
    ref = _numpy_highpass(d[0].double(), 0.1, 2).abs()
    assert valid.all()
    assert (mass.diff(dim=-1) >= -1e-12).all() and abs(mass[0, -1].item() - 1) < 1e-12
    assert_close(mass[0, :2], torch.stack([ref[qy, qx], ref[qy - 1:qy + 2, qx - 1:qx + 2].sum()]) / ref.sum(), F64,
                 "M_hp(1), M_hp(3) of a delta")


def test_gradient_and_erf_rules():
    ks = [1, 3, 5, 7]
    grad = locality.mass_gradient(ks, torch.tensor([0.1, 0.3, 0.5, 0.7], dtype=F64))
    assert_close(grad, torch.full((4,), 0.1, dtype=F64), F64, "linear gradient")
    assert locality.effective_receptive_field(ks, [0.1, 0.79, 0.8, 1.0], 0.8) == 5
    assert locality.effective_receptive_field(ks, [0.1, 0.2, 0.3, 0.4], 0.8) is None
    assert locality.effective_receptive_field(ks, [0.1, 0.2, 0.3, 1.0 - 1e-15], 1.0) == 7
    with pytest.raises(ValueError, match="threshold"):
        locality.effective_receptive_field(ks, [1, 1, 1, 1], 1.5)
    with pytest.raises(ValueError, match="kernel_sizes"):
        locality.score_mass(torch.ones(1, 3, 3), torch.tensor([0]), torch.tensor([0]), [1, 2])
    with pytest.raises(ValueError, match="cutoff"):
        locality.highpass(torch.ones(2, 2), 0.0, 2)
    with pytest.raises(ValueError, match="order"):
        locality.highpass(torch.ones(2, 2), 0.1, 0)
    with pytest.raises(ValueError, match="inside"):
        locality.score_mass(torch.ones(1, 3, 3), torch.tensor([3]), torch.tensor([0]), [1])


def test_kernel_rule():
    assert [nearest_odd(x) for x in (0.2, 2.0, 2.9, 3.0, 4.0, 4.1, 7.8)] == [1, 3, 3, 3, 5, 5, 7]
    rule = KernelRule()
    assert rule(11) == 7 and rule(21) == 13 and rule(3) == 3 and rule(101) == 31 and rule(None) == 31
    assert recommend_kernel_sizes({"a": 15, "b": None, "c": 25, "d": 3}, KernelRule(0.5, 5, 9)) == {
        "a": 7, "b": 9, "c": 9, "d": 5}
    for bad in (dict(fraction=0), dict(k_min=4), dict(k_min=9, k_max=7)):
        with pytest.raises(ValueError):
            KernelRule(**bad)


def test_accumulator_averages_queries_heads_then_steps(gen):
    h, w, s = 5, 7, 3
    qy, qx = torch.tensor([0, 2, 4]), torch.tensor([6, 3, 0])
    acc = LocalityAccumulator(max_kernel=9)
    ks = locality.odd_kernel_sizes(h, w, 9)
    per_step = []
    for step, chunks in ((999, 2), (10, 1)):  # step 999 arrives in two head chunks
        maps = torch.softmax(torch.randn(2, 4, s, h * w, generator=gen) * 3, -1).unflatten(-1, (h, w))
        per_step.append(locality.score_mass(maps, qy, qx, ks).mean((0, 1, 2)))
        for part in maps.chunk(chunks, dim=1):
            acc(CapturedMaps("x.attn1", step, (h, w), qy, qx, part, 0, 4))
    stats = acc.results()["x.attn1"]
    assert stats.kernel_sizes == ks and stats.hw == (h, w) and stats.heads == 4
    assert_close(torch.tensor(stats.mass, dtype=F64), (per_step[0] + per_step[1]) / 2, F64, "step-mean M")
    assert_close(torch.tensor(stats.mass_by_step["999"], dtype=F64), per_step[0], F64, "M at step 999")


def test_query_sample_is_seeded_distinct_and_includes_requested():
    qy, qx = query_sample(9, 7, 20, seed=3, layer="a", must_include=[(4, 3), (0, 0)])
    assert (qy[:2].tolist(), qx[:2].tolist()) == ([4, 0], [3, 0])
    assert len(set(zip(qy.tolist(), qx.tolist()))) == 20
    again = query_sample(9, 7, 20, seed=3, layer="a", must_include=[(4, 3), (0, 0)])
    assert torch.equal(qy, again[0]) and torch.equal(qx, again[1])
    assert len(query_sample(3, 2, 50, 0, "a")[0]) == 6  # capped at N


# ---------------------------------------------------------------- capture on real diffusers models

def _explicit_maps(attn, x):
    """softmax(QK^T * scale) over all queries from the layer's own projections: [B, heads, N, N]."""
    b, n, _ = x.shape
    q, k = attn.to_q(x), attn.to_k(x)
    q = q.view(b, n, attn.heads, -1).transpose(1, 2).double()
    k = k.view(b, n, attn.heads, -1).transpose(1, 2).double()
    return torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)


def _run_capture(model, call, max_elements, num_queries=7):
    """Capture with hooks that also record each attn1's input and output, so the test can recompute both."""
    captured, seen = [], {}
    layers = self_attention_layers(model)
    handles = [block.attn1.register_forward_hook(
        lambda m, a, kw, out, name=name: seen.__setitem__(name, (a[0] if a else kw["hidden_states"], out)),
        with_kwargs=True) for name, block in layers.items()]
    try:
        with AttentionCapture(model, captured.append, num_queries=num_queries, seed=1,
                              max_elements=max_elements) as cap, torch.no_grad():
            cap.step = 5
            out = call()
    finally:
        for hd in handles:
            hd.remove()
    return out, captured, seen, layers, cap


@pytest.mark.parametrize("kind,dtype", [("unet", torch.float32), ("pixart", torch.float32),
                                        ("pixart", torch.bfloat16)])
def test_capture_matches_explicit_softmax_and_layer_output(kind, dtype):
    if kind == "unet":  # odd latent: levels 9x7, 5x4, 3x2 and the mid block at 2x1
        model = tiny_unet("sd15")
        sample, t, ctx = unet_inputs(model, batch=2, height=9, width=7)
        call = lambda: model(sample, t, ctx).sample  # noqa: E731
    else:  # non-square latent 16x12 -> 8x6 tokens
        model = tiny_pixart(dtype=dtype)
        kw = pixart_inputs(model, batch=2, height=16, width=12)
        call = lambda: model(**kw).sample  # noqa: E731
    with torch.no_grad():
        plain = call()
    out, captured, seen, layers, cap = _run_capture(model, call, max_elements=40)  # forces head + query chunks
    assert torch.equal(out, plain), "capture changed the model's output"
    assert {c.layer for c in captured} == set(layers)
    for name, block in layers.items():
        attn = block.attn1
        x, y = seen[name]
        chunks = [c for c in captured if c.layer == name]
        h, w = chunks[0].hw
        assert h * w == x.shape[1] and all(c.step == 5 for c in chunks)
        full = _explicit_maps(attn, x).unflatten(-1, (h, w))  # [B, heads, N, H, W]
        v = attn.to_v(x)
        value = v.view(x.shape[0], -1, attn.heads, v.shape[-1] // attn.heads)  # [B, N, heads, d]
        for c in chunks:
            heads = slice(c.head_offset, c.head_offset + c.maps.shape[1])
            rows = (c.qy * w + c.qx)
            assert c.maps.dtype == torch.float32
            assert_close(c.maps, full[:, heads][:, :, rows].float(), dtype, f"{name} maps")
        # all chunks of a head together: maps @ V through to_out must give the layer's own output rows
        qy_all, qx_all = cap.samples[(name, h, w)]
        position = {q: i for i, q in enumerate(zip(qy_all.tolist(), qx_all.tolist()))}
        maps = torch.zeros(x.shape[0], attn.heads, len(qy_all), h * w)
        for c in chunks:
            idx = [position[q] for q in zip(c.qy.tolist(), c.qx.tolist())]
            maps[:, c.head_offset:c.head_offset + c.maps.shape[1], idx] = c.maps.flatten(-2)
        mixed = (maps.double() @ value.transpose(1, 2).double()).transpose(1, 2).flatten(2).to(dtype)
        rows = qy_all * w + qx_all
        assert_close(attn.to_out[0](mixed), y[:, rows], dtype, f"{name} output rows")
    if kind == "unet":
        assert sorted({c.hw for c in captured}) == [(2, 1), (3, 2), (5, 4), (9, 7)]  # mid block at 2x1


def test_capture_rejects_unknown_layers_and_converted_models():
    model = tiny_pixart()
    with pytest.raises(ValueError, match="not self-attention"):
        AttentionCapture(model, print, layers=["transformer_blocks.9.attn1"])
    model.transformer_blocks[0].attn1 = torch.nn.Identity()
    with pytest.raises(ValueError, match="already converted"):
        AttentionCapture(model, print)
    with pytest.raises(ValueError, match="no BasicTransformerBlock"):
        AttentionCapture(torch.nn.Linear(2, 2), print)


def test_analyze_pixart_recommends_valid_sizes():
    model = tiny_pixart()
    report = analyze(model, AnalysisSettings(timesteps=(999, 1), num_queries=12), latent_hw=(14, 10))
    assert list(report.layers) == ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]
    for r in report.layers.values():
        assert r.stats.hw == (7, 5) and r.stats.kernel_sizes == list(range(1, 14, 2))
        m = torch.tensor(r.stats.mass)
        assert (m.diff() >= -1e-9).all() and abs(m[-1].item() - 1) < 1e-6
        assert r.erf == locality.effective_receptive_field(r.stats.kernel_sizes, r.stats.mass, 0.8)
        assert r.kernel_size == KernelRule()(r.erf) and r.kernel_size % 2 == 1
        assert set(r.stats.mass_by_step) == {"999", "1"} and r.stats.queries_per_step == 1 * 2 * 12


def test_analyze_takes_its_own_latents_per_timestep():
    """inputs['latents'] as {timestep: x_t}: each step is measured on its own x_t (a step fed the other step's
    x_t measures what that step measured alone), and a missing timestep is refused."""
    model = tiny_pixart()
    gen = torch.Generator().manual_seed(1)
    cond = torch.randn(2, 5, model.config.caption_channels, generator=gen)
    xa, xb = (torch.randn(2, model.config.in_channels, 12, 12, generator=gen) for _ in range(2))
    settings = AnalysisSettings(timesteps=(999, 1), num_queries=8)
    mixed = analyze(model, settings, inputs={"latents": {999: xa, 1: xb}, "encoder_hidden_states": cond})
    only_a = analyze(model, settings, inputs={"latents": xa, "encoder_hidden_states": cond})
    only_b = analyze(model, settings, inputs={"latents": xb, "encoder_hidden_states": cond})
    for name, r in mixed.layers.items():
        assert r.stats.mass_by_step["999"] == only_a.layers[name].stats.mass_by_step["999"]
        assert r.stats.mass_by_step["1"] == only_b.layers[name].stats.mass_by_step["1"]
        assert r.stats.mass_by_step["1"] != only_a.layers[name].stats.mass_by_step["1"]
    with pytest.raises(ValueError, match=r"no latents for timesteps \[1\]"):
        analyze(model, settings, inputs={"latents": {999: xa}, "encoder_hidden_states": cond})


def test_analyze_sdxl_style_unet_and_dit():
    from diffusers import UNet2DConditionModel

    from deltaconv_kernels.analysis.tiny import tiny_dit
    torch.manual_seed(0)
    sdxl = UNet2DConditionModel(  # text_time conditioning needs text_embeds + time_ids, which analyze synthesises
        sample_size=8, block_out_channels=(16, 32), layers_per_block=1, attention_head_dim=(2, 4),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=80, cross_attention_dim=32,
        norm_num_groups=8).eval()
    report = analyze(sdxl, AnalysisSettings(timesteps=(500,), num_queries=4), latent_hw=(10, 6))
    assert len(report.layers) == 8 and {r.stats.hw for r in report.layers.values()} == {(5, 3)}
    # diffusers' DiT unpatchify assumes a square token map
    report = analyze(tiny_dit(), AnalysisSettings(timesteps=(500,), num_queries=4), latent_hw=(10, 10))
    assert [r.stats.hw for r in report.layers.values()] == [(5, 5), (5, 5)]


def test_resolution_parsing_and_short_names():
    assert latent_size_from_resolution("512") == (64, 64)
    assert latent_size_from_resolution("1024x772") == (128, 97)
    with pytest.raises(ValueError, match="resolution"):
        latent_size_from_resolution("big")
    assert short_name("down_blocks.1.attentions.0.transformer_blocks.2.attn1") == "down1.a0.t2"
    assert short_name("transformer_blocks.13.attn1") == "t13"


# ---------------------------------------------------------------- end to end

def _convert():
    try:
        from deltaconv_kernels.integrations.diffusers import convert
    except ImportError as exc:
        pytest.skip(f"the diffusers integration (deltaconv_kernels.integrations.diffusers.convert) is not "
                    f"importable: {exc}")
    return convert


def test_cli_end_to_end_writes_json_and_plots_and_feeds_convert(tmp_path, capsys):
    from deltaconv_kernels.analysis import cli
    from deltaconv_kernels.cli import build_parser

    argv = ["analyze", "--tiny", "pixart", "--out", str(tmp_path), "--timesteps", "999,500", "--num-queries", "10",
            "--resolution", "96x80", "--no-progress"]
    args = build_parser(argv).parse_args(argv)
    assert cli.run(args) == 0
    data = json.loads((tmp_path / "analysis.json").read_text())
    names = ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]
    assert list(data["layers"]) == names and list(data["kernel_sizes"]) == names
    for layer in data["layers"].values():
        assert (layer["H"], layer["W"]) == (6, 5)
        n = len(layer["kernel_sizes"])
        assert all(len(layer[key]) == n for key in ("M", "dM_dk", "M_hp", "dM_hp_dk"))
        assert layer["recommended_kernel_size"] % 2 == 1 and 3 <= layer["recommended_kernel_size"] <= 31
    for png in ("mass.png", "mass_highpass.png", "erf.png", "attention_maps.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "kernel_sizes for convert" in capsys.readouterr().out

    convert = _convert()
    model = cli.load_model(Namespace(tiny="pixart", seed=0, dtype="float32", device="cpu"))
    report = convert(model, kernel_sizes=data["kernel_sizes"])
    assert report.kernel_sizes() == data["kernel_sizes"]
    x = torch.randn(1, 4, 12, 10)
    with torch.no_grad():
        out = model(x, encoder_hidden_states=torch.randn(1, 3, 32), timestep=torch.tensor([5]),
                    added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
    assert out.shape == (1, 8, 12, 10) and torch.isfinite(out).all()


def test_layer_names_are_the_names_convert_reports():
    convert = _convert()
    for model in (tiny_unet("sdxl"), tiny_pixart()):  # sdxl layout: several transformer blocks per level
        names = list(self_attention_layers(model))
        assert names == list(convert(model, kernel_sizes=3).kernel_sizes())


def test_cli_loads_a_local_model_folder(tmp_path):
    from deltaconv_kernels.analysis import cli
    from deltaconv_kernels.cli import build_parser

    tiny_pixart().save_pretrained(tmp_path / "pipe" / "transformer")
    gen = torch.Generator().manual_seed(0)
    torch.save({"latents": torch.randn(2, 4, 14, 10, generator=gen),
                "encoder_hidden_states": torch.randn(2, 6, 32, generator=gen)}, tmp_path / "inputs.pt")
    argv = ["analyze", "--model", str(tmp_path / "pipe"), "--subfolder", "transformer", "--out", str(tmp_path / "a"),
            "--timesteps", "500", "--num-queries", "4", "--no-plots", "--no-progress", "--threshold", "0.5",
            "--hp-cutoff", "0.2", "--hp-order", "3", "--k-fraction", "1.0", "--k-max", "9",
            "--inputs", str(tmp_path / "inputs.pt")]
    assert cli.run(build_parser(argv).parse_args(argv)) == 0
    data = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert data["settings"]["highpass"] == {"filter": "butterworth", "cutoff_cycles_per_px": 0.2, "order": 3,
                                            "power": 1}
    assert data["batch_size"] == 2 and data["latent_hw"] == [14, 10]
    for layer in data["layers"].values():
        assert (layer["H"], layer["W"]) == (7, 5) and layer["maps_per_timestep"] == 2 * 2 * 4
        assert layer["erf"] == locality.effective_receptive_field(layer["kernel_sizes"], layer["M"], 0.5)
        assert layer["recommended_kernel_size"] == KernelRule(1.0, 3, 9)(layer["erf"])
    assert not list((tmp_path / "a").glob("*.png"))
    bad = ["analyze", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "b")]
    with pytest.raises(FileNotFoundError, match="config.json"):
        cli.run(build_parser(bad).parse_args(bad))
