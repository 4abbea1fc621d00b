"""convert(): released layouts on full-size meta models, tiny models at any size/dtype/batch, the layer-level
reference check, size-hook errors, distillation modes, torch.compile."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("diffusers", reason="the diffusers integration needs the diffusers package")

from converted import randomize_blocks  # noqa: E402
from diffusers.models.attention import BasicTransformerBlock  # noqa: E402
from diffusers.models.attention_processor import Attention  # noqa: E402
from tiny_models import meta_model, pixart_inputs, tiny_dit, tiny_pixart, tiny_unet, unet_inputs  # noqa: E402

from deltaconv_kernels import reference  # noqa: E402
from deltaconv_kernels.integrations import diffusers as dd  # noqa: E402
from deltaconv_kernels.testing import assert_close, reference_inputs, relative_errors  # noqa: E402

# docs/DESIGN.md §1, written out again here so that a wrong table in the package cannot pass.
EXPECTED_UNET_K = {
    "sd15": {"down_blocks.0": 7, "down_blocks.1": 9, "down_blocks.2": 5, "mid_block": 3,
             "up_blocks.1": 5, "up_blocks.2": 9, "up_blocks.3": 11},
    "sdxl": {"down_blocks.1": 9, "down_blocks.2": 7, "mid_block": 9, "up_blocks.0": 9, "up_blocks.1": 13},
}


def _blocks(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BasicTransformerBlock)]


def _level_prefix(name: str) -> str:
    return "mid_block" if name.startswith("mid_block") else ".".join(name.split(".")[:2])


@pytest.mark.parametrize("name,count", [("sd15", 16), ("sdxl", 70)])
def test_full_unet_on_meta_released_layout(name, count):
    model = meta_model(name)
    cross = {n: m.attn2 for n, m in _blocks(model)}
    report = dd.convert(model)
    assert len(report) == count and report.preset == name
    for row in report:
        level = _level_prefix(row.name)
        assert row.kernel_size == EXPECTED_UNET_K[name][level], row.name
        assert row.gate == "scaled"
    for n, block in _blocks(model):
        assert isinstance(block.attn1, dd.DeltaConvAttention) and block.attn1.block.kernel_size > 1
        assert block.attn2 is cross[n] and isinstance(block.attn2, Attention)  # cross-attention untouched
        assert block.attn1.block.proj_in.weight.is_meta
    assert not any(isinstance(m, Attention) and m.is_cross_attention is False and n.endswith("attn1")
                   for n, m in model.named_modules())
    text = str(report)
    assert all(row.name in text for row in report) and "layer" in text and "gate" in text


@pytest.mark.parametrize("name", ["pixart_sigma", "pixart_alpha", "dit"])
def test_full_transformers_on_meta(name):
    model = meta_model(name)
    report = dd.convert(model)
    assert len(report) == 28
    expected_k = 7 if name == "dit" else 13
    assert {r.kernel_size for r in report} == {expected_k} and {r.gate for r in report} == {"sigmoid"}
    assert {r.channels for r in report} == {1152}
    for _, block in _blocks(model):
        assert isinstance(block.attn1, dd.DeltaConvAttention)
        assert block.attn2 is None or isinstance(block.attn2, Attention)


def test_kernel_size_dict_round_trip_and_errors():
    report = dd.convert(meta_model("sdxl"), kernel_sizes=5)
    assert {r.kernel_size for r in report} == {5} and report.preset is None
    sizes = {n: 3 + 2 * (i % 4) for i, n in enumerate(report.kernel_sizes())}
    again = dd.convert(meta_model("sdxl"), kernel_sizes=sizes, gate="sigmoid")
    assert again.kernel_sizes() == sizes and {r.gate for r in again} == {"sigmoid"}
    missing = dict(sizes)
    missing.pop(next(iter(missing)))
    with pytest.raises(ValueError, match="missing"):
        dd.convert(meta_model("sdxl"), kernel_sizes=missing)
    with pytest.raises(ValueError, match="unknown"):
        dd.convert(meta_model("sdxl"), kernel_sizes={**sizes, "down_blocks.9.attn1": 3})
    bad = {**sizes, next(iter(sizes)): 4}
    with pytest.raises(ValueError, match="odd"):
        dd.convert(meta_model("sdxl"), kernel_sizes=bad)
    with pytest.raises(ValueError, match="released"):
        dd.convert(meta_model("sdxl"), kernel_sizes="fast")


def test_bad_arguments_leave_model_untouched():
    model = tiny_unet("sd15")
    with pytest.raises(ValueError, match="gate"):
        dd.convert(model, gate="relu")
    with pytest.raises(ValueError, match="even"):
        dd.convert(model, inter_ratio=0.2)
    assert not list(dd.iter_deltaconv_modules(model))
    dd.convert(model)
    with pytest.raises(ValueError, match="already converted"):
        dd.convert(model)


def test_unsupported_models_fail_clearly():
    from diffusers import UNet2DModel
    with pytest.raises(TypeError, match="unsupported model UNet2DModel"):
        dd.convert(UNet2DModel(block_out_channels=(8, 8), norm_num_groups=4, layers_per_block=1,
                               down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2))
    with pytest.raises(TypeError, match="pipeline"):
        dd.convert(object())
    # A U-Net whose attention layout matches no released model needs explicit kernel sizes.
    from diffusers import UNet2DConditionModel
    odd = UNet2DConditionModel(block_out_channels=(16, 16), norm_num_groups=8, layers_per_block=1,
                               cross_attention_dim=16, attention_head_dim=4,
                               down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    with pytest.raises(ValueError, match="no released kernel sizes"):
        dd.convert(odd)
    assert len(dd.convert(odd, kernel_sizes=3)) == 4  # down.0, mid, 2 x up.1


@pytest.mark.parametrize("layout,hw", [("sd15", (64, 48)), ("sd15", (72, 56)), ("sd15", (37, 29)),
                                       ("sdxl", (40, 24)), ("sdxl", (27, 21))])
def test_tiny_unet_forward_any_size(layout, hw):
    model = tiny_unet(layout)
    sample, t, ctx = unet_inputs(model, batch=1, height=hw[0], width=hw[1])
    with torch.no_grad():
        before = model(sample, t, ctx).sample
        dd.convert(model)
        randomize_blocks(model, seed=1)
        after = _check_every_layer(model, lambda: model(sample, t, ctx).sample)
    assert after.shape == before.shape == sample.shape and after.dtype == before.dtype
    assert torch.isfinite(after).all()


def test_tiny_unet_odd_latent_125x93_batch_1_and_3():
    # Strided convs round odd sizes up (125 -> 63 -> 32 -> 16); the up path matches the skips' sizes.
    model = tiny_unet("sd15")
    dd.convert(model)
    seen = {}
    for name, layer in dd.iter_deltaconv_modules(model):
        layer.register_forward_hook(lambda m, a, o, name=name: seen.__setitem__(name, m._size.hw))
    for batch, (h, w) in ((3, (25, 19)), (1, (125, 93))):  # the last one sets the sizes checked below
        sample, t, ctx = unet_inputs(model, batch=batch, height=h, width=w)
        with torch.no_grad():
            out = model(sample, t, ctx).sample
        assert out.shape == sample.shape and torch.isfinite(out).all()
    assert seen["down_blocks.0.attentions.0.transformer_blocks.0.attn1"] == (125, 93)
    assert seen["down_blocks.1.attentions.0.transformer_blocks.0.attn1"] == (63, 47)
    assert seen["mid_block.attentions.0.transformer_blocks.0.attn1"] == (16, 12)
    assert seen["up_blocks.2.attentions.1.transformer_blocks.0.attn1"] == (63, 47)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tiny_models_half_precision(dtype):
    unet = tiny_unet("sdxl", dtype=dtype)
    dd.convert(unet)
    sample, t, ctx = unet_inputs(unet, batch=2, height=20, width=12)
    with torch.no_grad():
        out = unet(sample, t, ctx).sample
    assert out.dtype == dtype and out.shape == sample.shape and torch.isfinite(out).all()
    pix = tiny_pixart(dtype=dtype)
    dd.convert(pix)
    inputs = pixart_inputs(pix, batch=1, height=18, width=14)
    with torch.no_grad():
        out = pix(**inputs).sample
    assert out.dtype == dtype and out.shape == (1, 8, 18, 14) and torch.isfinite(out).all()


@settings(max_examples=6, deadline=None)
@given(h=st.integers(8, 40), w=st.integers(8, 40), batch=st.integers(1, 3))
def test_tiny_pixart_any_size_fuzz(h, w, batch):
    model = tiny_pixart()
    dd.convert(model)
    randomize_blocks(model, seed=1)
    with torch.no_grad():
        out = _check_every_layer(model, lambda: model(**pixart_inputs(model, batch=batch, height=h, width=w)).sample)
    # diffusers' unpatchify drops an odd last row/column; the token map is (h // 2) x (w // 2).
    assert out.shape == (batch, 8, h // 2 * 2, w // 2 * 2) and torch.isfinite(out).all()


def test_tiny_dit_square():
    model = tiny_dit()
    assert len(dd.convert(model)) == 2
    x = torch.randn(2, 4, 12, 12)
    with torch.no_grad():
        out = model(x, timestep=torch.tensor([3, 5]), class_labels=torch.tensor([1, 2])).sample
    assert out.shape == (2, 8, 12, 12) and torch.isfinite(out).all()


def _capture(layer):
    store = {}

    def hook(module, args, kwargs, output):
        store["x"] = args[0] if args else kwargs["hidden_states"]
        store["y"] = output
    layer.register_forward_hook(hook, with_kwargs=True)
    return store


def _reference_block(block, x_spatial):
    p = block.proj_in
    ws = [s.weight for s in block.stages]
    tensors = reference_inputs(x_spatial, p.weight, p.bias, *ws, block.proj_out.weight, block.proj_out.bias,
                               block.pool_proj.weight, block.pool_proj.bias)
    x, w_in, b_in = tensors[:3]
    stage_w = tensors[3:3 + len(ws)]
    w_out, b_out, w_pool, b_pool = tensors[3 + len(ws):]
    return reference.deltaconv_block(x, w_in, b_in, stage_w, block.scales, w_out, b_out, w_pool, b_pool,
                                     block.gate, block.gate_scale)


def _check_every_layer(model, run):
    """Run the model once and check every converted layer's output against the reference block on the map of the
    size that layer recorded (a value check of the whole conversion, not only shapes); returns run()'s result."""
    stores = {name: (layer, _capture(layer)) for name, layer in dd.iter_deltaconv_modules(model)}
    out = run()
    for name, (layer, store) in stores.items():
        x, y = store["x"], store["y"]
        b, n, c = x.shape
        hw = layer._size.hw
        assert n == hw[0] * hw[1], (name, n, hw)
        expected = _reference_block(layer.block, x.reshape(b, *hw, c))
        assert_close(y.reshape(b, *hw, c), expected, dtype=torch.float32, what=f"{name} output at {hw}")
    return out


@pytest.mark.parametrize("kind", ["unet", "pixart"])
def test_layer_output_matches_reference_on_non_square_map(kind):
    if kind == "unet":
        model = tiny_unet("sd15")
        dd.convert(model)
        name, hw = "down_blocks.1.attentions.0.transformer_blocks.0.attn1", (12, 8)  # latent 24x16 at 1/2
        run = lambda: model(*unet_inputs(model, batch=2, height=24, width=16))  # noqa: E731
    else:
        model = tiny_pixart()
        dd.convert(model)
        name, hw = "transformer_blocks.1.attn1", (10, 6)  # latent 20x12, patch 2
        run = lambda: model(**pixart_inputs(model, batch=2, height=20, width=12))  # noqa: E731
    randomize_blocks(model, seed=1)
    layer = dict(dd.iter_deltaconv_modules(model))[name]
    store = _capture(layer)
    with torch.no_grad():
        run()
    x, y = store["x"], store["y"]
    b, n, c = x.shape
    assert n == hw[0] * hw[1]
    expected = _reference_block(layer.block, x.reshape(b, *hw, c))
    assert_close(y.reshape(b, *hw, c), expected, dtype=torch.float32, what=f"{name} output")
    # The same tokens read as the transposed map give a different answer, so the check above can fail.
    wrong = _reference_block(layer.block, x.reshape(b, hw[1], hw[0], c)).reshape(b, *hw, c)
    assert relative_errors(y.reshape(b, *hw, c), wrong)[0] > 1e-2


def test_size_unknown_or_inconsistent_raises():
    model = tiny_unet("sd15")
    dd.convert(model)
    name, layer = next(iter(dd.iter_deltaconv_modules(model)))
    with pytest.raises(RuntimeError, match="unknown"):
        layer(torch.randn(1, 12, layer.block.dim))
    with torch.no_grad():
        model(*unet_inputs(model, batch=1, height=16, width=12))
    assert layer._size.hw == (16, 12)
    with pytest.raises(RuntimeError, match="N=13"):
        layer(torch.randn(1, 13, layer.block.dim))
    with pytest.raises(ValueError, match="self-attention only"):
        layer(torch.randn(1, 192, layer.block.dim), encoder_hidden_states=torch.randn(1, 3, 32))
    with pytest.raises(ValueError, match="attention_mask"):
        layer(torch.randn(1, 192, layer.block.dim), attention_mask=torch.ones(1, 192))


def test_modes_for_distillation():
    plain = tiny_unet("sd15")
    model = tiny_unet("sd15")
    dd.convert(plain)
    dd.convert(model, keep_attention=True)
    model.load_state_dict(plain.state_dict(), strict=False)  # same ΔConvBlock weights
    inputs = unet_inputs(model, batch=2, height=16, width=12)
    original = tiny_unet("sd15")
    with torch.no_grad():
        ref_teacher = original(*inputs).sample
        ref_student = plain(*inputs).sample
        dd.set_mode(model, "teacher")
        assert torch.equal(model(*inputs).sample, ref_teacher)
        dd.set_mode(model, "student")
        assert torch.equal(model(*inputs).sample, ref_student)
    dd.set_mode(model, "distill")
    out = model(*inputs).sample
    assert torch.equal(out.detach(), ref_student)
    for _, layer in dd.iter_deltaconv_modules(model):
        student, teacher = layer.last_features
        assert student.requires_grad and not teacher.requires_grad and student.shape == teacher.shape
    params = dd.deltaconv_parameters(model)
    block_params = {id(p) for _, m in dd.iter_deltaconv_modules(model) for p in m.block.parameters()}
    assert {id(p) for p in params} == block_params and len(params) == 10 * 8
    out.square().mean().backward()
    assert all(p.grad is not None for p in params)
    with pytest.raises(ValueError, match="mode must be one of"):
        dd.set_mode(model, "train")
    with pytest.raises(ValueError, match="keep_attention=True"):
        dd.set_mode(plain, "teacher")
    with pytest.raises(ValueError, match="keep_attention=True"):
        next(iter(dd.iter_deltaconv_modules(plain)))[1].mode = "distill"
    with pytest.raises(ValueError, match="not converted"):
        dd.set_mode(tiny_unet("sd15"), "student")


def test_torch_compile_converted_unet():
    # fullgraph=True: the size hooks and every ΔConvBlock trace without a graph break. (backend "aot_eager"
    # also passes, but costs ~2x the CPU time of this suite's budget; inductor codegen is tested elsewhere.)
    model = tiny_unet("sdxl")
    dd.convert(model)
    inputs = unet_inputs(model, batch=2, height=16, width=12)
    with torch.no_grad():
        eager = model(*inputs).sample
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        out = compiled(*inputs).sample
    assert_close(out, eager, what="compiled U-Net output")


def test_deepcopy_keeps_hooks_and_sizes_paired():
    import copy
    model = tiny_pixart()
    dd.convert(model)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone(**pixart_inputs(clone, batch=1, height=20, width=12))
    sizes = [m._size.hw for _, m in dd.iter_deltaconv_modules(clone)]
    assert sizes == [(10, 6), (10, 6)]
    assert all(m._size.hw is None for _, m in dd.iter_deltaconv_modules(model))  # the original saw nothing
