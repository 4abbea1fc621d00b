"""`save` / `load` of converted models: a bit-identical round trip, every strict check, and malformed checkpoints
(config entries, JSON, safetensors bytes, weight values) refused before the model is touched (docs/DESIGN.md §8)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers", reason="the diffusers integration needs the diffusers package")

from converted import randomize_blocks, run_pixart, run_unet  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tiny_models import meta_model, tiny_pixart, tiny_unet  # noqa: E402

from deltaconv_kernels.integrations import diffusers as dd  # noqa: E402
from deltaconv_kernels.integrations.diffusers.files import CONFIG_NAME, WEIGHTS_NAME  # noqa: E402


@pytest.fixture
def saved_unet(tmp_path):
    model = tiny_unet("sd15")
    sizes = {n: 3 + 2 * (i % 3) for i, n in enumerate(dd.convert(tiny_unet("sd15")).kernel_sizes())}
    dd.convert(model, kernel_sizes=sizes)
    randomize_blocks(model)
    dd.save(model, tmp_path / "ckpt")
    return model, tmp_path / "ckpt", sizes


def test_save_load_bit_identical_unet(saved_unet):
    model, path, sizes = saved_unet
    assert sorted(p.name for p in path.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])  # no temp files left
    fresh = tiny_unet("sd15")  # same seed: same base weights
    report = dd.load(fresh, path)
    assert report.kernel_sizes() == sizes
    assert torch.equal(run_unet(fresh), run_unet(model))
    # Loading into an already converted model (e.g. resuming) checks it and restores the weights.
    again = tiny_unet("sd15")
    dd.convert(again, kernel_sizes=sizes)
    assert dd.load(again, path) is None
    assert torch.equal(run_unet(again), run_unet(model))


def test_save_load_bit_identical_pixart_bf16_with_kept_attention(tmp_path):
    model = tiny_pixart(dtype=torch.bfloat16)
    dd.convert(model, gate="scaled", scales=(1.0, 0.5, 0.25))
    randomize_blocks(model)
    dd.save(model, tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["scales"] == [1.0, 0.5, 0.25] and config["fingerprint"]["class"] == "PixArtTransformer2DModel"
    fresh = tiny_pixart(dtype=torch.bfloat16)
    dd.load(fresh, tmp_path, keep_attention=True)
    assert all(m.attention is not None for _, m in dd.iter_deltaconv_modules(fresh))
    assert {m.block.gate for _, m in dd.iter_deltaconv_modules(fresh)} == {"scaled"}
    assert torch.equal(run_pixart(fresh), run_pixart(model))


def _rewrite(path: Path, edit_config=None, edit_tensors=None):
    if edit_config:
        config = json.loads((path / CONFIG_NAME).read_text())
        edit_config(config)
        (path / CONFIG_NAME).write_text(json.dumps(config))
    if edit_tensors:
        tensors = load_file(str(path / WEIGHTS_NAME))
        edit_tensors(tensors)
        save_file(tensors, str(path / WEIGHTS_NAME))


FIRST = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"


def _drop_layer(config):
    del config["layers"][FIRST]


def _add_layer(config):
    config["layers"]["down_blocks.7.attentions.0.transformer_blocks.0.attn1"] = config["layers"][FIRST]


def _drop_tensor(tensors):
    del tensors[f"{FIRST}.pool_proj.bias"]


def _extra_tensor(tensors):
    tensors[f"{FIRST}.stages.5.weight"] = torch.zeros(3, 3, 4)


def _bad_shape(tensors):
    tensors[f"{FIRST}.stages.0.weight"] = torch.randn(5, 5, 4)


def _bad_format(config):
    config["format"] = "something else"


@pytest.mark.parametrize("edit_config,edit_tensors,match", [
    (_drop_layer, None, "lacks 1 layers of the model"),
    (_add_layer, None, "layers the model does not have"),
    (None, _drop_tensor, "lacks 1 tensors"),
    (None, _extra_tensor, "unexpected tensors"),
    (None, _bad_shape, r"stages.0.weight has shape \(5, 5, 4\)"),
    (_bad_format, None, "format"),
])
def test_load_strict_errors(saved_unet, edit_config, edit_tensors, match):
    _, path, _ = saved_unet
    _rewrite(path, edit_config, edit_tensors)
    fresh = tiny_unet("sd15")
    with pytest.raises(dd.CheckpointError, match=match):
        dd.load(fresh, path)
    assert not list(dd.iter_deltaconv_modules(fresh))  # a failed load leaves the model untouched


def test_load_other_architecture_and_mismatched_conversion(saved_unet, tmp_path):
    _, path, sizes = saved_unet
    with pytest.raises(dd.CheckpointError, match="another architecture"):
        dd.load(tiny_unet("sdxl"), path)
    with pytest.raises(dd.CheckpointError, match="another architecture"):
        dd.load(tiny_pixart(), path)
    converted = tiny_unet("sd15")
    dd.convert(converted, kernel_sizes={n: 3 for n in sizes})
    with pytest.raises(dd.CheckpointError, match="differs from checkpoint"):
        dd.load(converted, path)
    with pytest.raises(dd.CheckpointError, match="not a deltaconv checkpoint"):
        dd.load(tiny_unet("sd15"), tmp_path / "nowhere")
    (path / WEIGHTS_NAME).unlink()
    with pytest.raises(dd.CheckpointError, match="no deltaconv.safetensors"):
        dd.load(tiny_unet("sd15"), path)


def test_save_errors(tmp_path):
    with pytest.raises(ValueError, match="not converted"):
        dd.save(tiny_unet("sd15"), tmp_path)
    meta = meta_model("pixart_sigma")
    dd.convert(meta)
    with pytest.raises(ValueError, match="meta device"):
        dd.save(meta, tmp_path)


# --- malformed checkpoints ----------------------------------------------------------------------------------------

PIXART_FIRST = "transformer_blocks.0.attn1"


@pytest.fixture
def saved(tmp_path):
    model = tiny_pixart()
    dd.convert(model, kernel_sizes=3)
    randomize_blocks(model)
    dd.save(model, tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


def _edit_config(path, edit):
    config = json.loads((path / CONFIG_NAME).read_text())
    edit(config)
    (path / CONFIG_NAME).write_text(json.dumps(config))


def _set_layer(key, value):
    return lambda c: c["layers"][PIXART_FIRST].__setitem__(key, value)


CONFIG_CASES = {
    "gate_scale null": (_set_layer("gate_scale", None), f"layer {PIXART_FIRST}: gate_scale must be a real number"),
    "gate_scale str": (_set_layer("gate_scale", "abc"), f"layer {PIXART_FIRST}: gate_scale must be a real number"),
    "gate_scale negative": (_set_layer("gate_scale", -1.0), "gate_scale must be a finite number > 0"),
    "kernel float": (_set_layer("kernel_size", 3.0), "kernel_size must be an int"),
    "gate unknown": (_set_layer("gate", "relu"), "gate must be one of"),
    "layer missing dim": (lambda c: c["layers"][PIXART_FIRST].pop("dim"), r"lacks \['dim'\]"),
    "layer a list": (lambda c: c["layers"].__setitem__(PIXART_FIRST, [1, 2]), "expected an object, got list"),
    "no fingerprint": (lambda c: c.pop("fingerprint"), "'fingerprint' must be a JSON object, got missing"),
    "no layers": (lambda c: c.pop("layers"), "'layers' must be a JSON object, got missing"),
    "layers a list": (lambda c: c.__setitem__("layers", []), "'layers' must be a JSON object, got a list"),
    "scales bad": (lambda c: c.__setitem__("scales", [1.0, 2.0]), r"scales must lie in \(0, 1\]"),
    "inter_ratio nan": (lambda c: c.__setitem__("inter_ratio", float("nan")), "inter_ratio must be a finite"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_malformed_config_is_refused_before_any_change(saved, case):
    _, path = saved
    edit, match = CONFIG_CASES[case]
    _edit_config(path, edit)
    fresh = tiny_pixart()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(dd.CheckpointError, match=match) as info:
        dd.load(fresh, path)
    assert str(path / CONFIG_NAME) in str(info.value)
    assert not list(dd.iter_deltaconv_modules(fresh))  # never converted with random weights
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


@pytest.mark.parametrize("text,match", [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object")])
def test_bad_json_is_a_checkpoint_error(saved, text, match):
    _, path = saved
    (path / CONFIG_NAME).write_text(text)
    with pytest.raises(dd.CheckpointError, match=match):
        dd.load(tiny_pixart(), path)


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_corrupt_safetensors_is_a_checkpoint_error(saved, damage):
    _, path = saved
    weights = path / WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\xff" * 8 + data[8:])
    fresh = tiny_pixart()
    with pytest.raises(dd.CheckpointError, match=f"{weights}: not a readable safetensors file"):
        dd.load(fresh, path)
    assert not list(dd.iter_deltaconv_modules(fresh))


@pytest.mark.parametrize("edit,match", [
    (lambda t: t[f"{PIXART_FIRST}.proj_in.weight"].view(-1)[3].fill_(float("nan")), "proj_in.weight holds 1 NaN/Inf"),
    (lambda t: t[f"{PIXART_FIRST}.pool_proj.bias"].fill_(float("inf")), "pool_proj.bias holds 16 NaN/Inf"),
    (lambda t: t.__setitem__(f"{PIXART_FIRST}.proj_out.bias", t[f"{PIXART_FIRST}.proj_out.bias"].to(torch.int32)),
     "proj_out.bias has dtype torch.int32"),
])
def test_bad_weight_values_are_refused(saved, edit, match):
    _, path = saved
    tensors = load_file(str(path / WEIGHTS_NAME))
    edit(tensors)
    save_file(tensors, str(path / WEIGHTS_NAME))
    fresh = tiny_pixart()
    with pytest.raises(dd.CheckpointError, match=match):
        dd.load(fresh, path)
    assert not list(dd.iter_deltaconv_modules(fresh))


# --- the files save writes ------------------------------------------------------------------------------------------

def test_saved_files_follow_the_umask(tmp_path):
    model = tiny_pixart()
    dd.convert(model, kernel_sizes=3)
    old = os.umask(0o022)
    try:
        dd.save(model, tmp_path / "a")
        os.umask(0o027)
        dd.save(model, tmp_path / "b")
    finally:
        os.umask(old)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        assert stat.S_IMODE((tmp_path / "a" / name).stat().st_mode) == 0o644
        assert stat.S_IMODE((tmp_path / "b" / name).stat().st_mode) == 0o640
