"""Malformed checkpoints never half-load a model, files are written once, atomically, with the umask's mode,
and released checkpoints as the release really writes them import."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

pytest.importorskip("diffusers", reason="the diffusers integration needs the diffusers package")

from safetensors.torch import load_file, save_file  # noqa: E402
from test_diffusers_checkpoint import _randomize, _released_state, _run_pixart  # noqa: E402
from tiny_models import tiny_pixart  # noqa: E402

from deltaconv_kernels import fileio  # noqa: E402
from deltaconv_kernels.integrations import diffusers as dd  # noqa: E402
from deltaconv_kernels.integrations.diffusers_checkpoint import CONFIG_NAME, WEIGHTS_NAME  # noqa: E402

FIRST = "transformer_blocks.0.attn1"


@pytest.fixture
def saved(tmp_path):
    model = tiny_pixart()
    dd.convert(model, kernel_sizes=3)
    _randomize(model)
    dd.save(model, tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


def _edit_config(path, edit):
    config = json.loads((path / CONFIG_NAME).read_text())
    edit(config)
    (path / CONFIG_NAME).write_text(json.dumps(config))


def _set_layer(key, value):
    return lambda c: c["layers"][FIRST].__setitem__(key, value)


CONFIG_CASES = {
    "gate_scale null": (_set_layer("gate_scale", None), f"layer {FIRST}: gate_scale must be a real number"),
    "gate_scale str": (_set_layer("gate_scale", "abc"), f"layer {FIRST}: gate_scale must be a real number"),
    "gate_scale negative": (_set_layer("gate_scale", -1.0), "gate_scale must be a finite number > 0"),
    "kernel float": (_set_layer("kernel_size", 3.0), "kernel_size must be an int"),
    "gate unknown": (_set_layer("gate", "relu"), "gate must be one of"),
    "layer missing dim": (lambda c: c["layers"][FIRST].pop("dim"), r"lacks \['dim'\]"),
    "layer a list": (lambda c: c["layers"].__setitem__(FIRST, [1, 2]), "expected an object, got list"),
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
    (lambda t: t[f"{FIRST}.proj_in.weight"].view(-1)[3].fill_(float("nan")), "proj_in.weight holds 1 NaN/Inf"),
    (lambda t: t[f"{FIRST}.pool_proj.bias"].fill_(float("inf")), "pool_proj.bias holds 16 NaN/Inf"),
    (lambda t: t.__setitem__(f"{FIRST}.proj_out.bias", t[f"{FIRST}.proj_out.bias"].to(torch.int32)),
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


# --- one atomic write, umask modes, stale temp files ----------------------------------------------------------

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


def test_one_atomic_write_helper():
    from deltaconv_kernels.distill import checkpointing
    from deltaconv_kernels.integrations import diffusers_checkpoint

    assert checkpointing.atomic_write is fileio.atomic_write
    assert diffusers_checkpoint.atomic_write is fileio.atomic_write
    assert not hasattr(diffusers_checkpoint, "_atomic_write")


def test_remove_stale_temps(tmp_path):
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"torn")
    (tmp_path / ".history.csv.x.tmp").write_bytes(b"torn")
    (tmp_path / ".other.txt.x.tmp").write_bytes(b"not ours")
    (tmp_path / "checkpoint.pt").write_bytes(b"kept")
    removed = fileio.remove_stale_temps(tmp_path, ["checkpoint.pt", "history.csv"])
    assert sorted(p.name for p in removed) == [".checkpoint.pt.abc123.tmp", ".history.csv.x.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.txt.x.tmp", "checkpoint.pt"]


# --- released checkpoints as the release writes them --------------------------------------------------------------

@pytest.fixture
def released():
    model = tiny_pixart()
    dd.convert(model, kernel_sizes={"transformer_blocks.0.attn1": 5, "transformer_blocks.1.attn1": 9})
    _randomize(model, seed=7)
    return model, _released_state(model, prefix="")


def test_import_base_prefixed_safetensors(released, tmp_path):
    model, state = released
    save_file({f"base:{k}": v for k, v in state.items()}, str(tmp_path / "r.safetensors"))
    fresh = tiny_pixart()
    dd.import_released(fresh, tmp_path / "r.safetensors")
    assert torch.equal(_run_pixart(fresh), _run_pixart(model))


@pytest.mark.parametrize("nest", ["base", "base_ema"])
def test_import_base_nested_pt(released, tmp_path, nest):
    model, state = released
    torch.save({nest: state}, tmp_path / "r.pt")
    fresh = tiny_pixart()
    dd.import_released(fresh, tmp_path / "r.pt")
    assert torch.equal(_run_pixart(fresh), _run_pixart(model))


def test_both_nests_are_ambiguous(released, tmp_path):
    _, state = released
    torch.save({"base": state, "base_ema": state}, tmp_path / "r.pt")
    with pytest.raises(dd.CheckpointError, match=r"holds both \['base', 'base_ema'\]"):
        dd.import_released(tiny_pixart(), tmp_path / "r.pt")


def test_first_release_layout_with_stage_bias_is_named(released, tmp_path):
    _, state = released
    state["transformer_blocks.0.conv1.gates.0.conv_spatial.bias"] = torch.zeros(8)
    save_file(state, str(tmp_path / "r.safetensors"))
    fresh = tiny_pixart()
    with pytest.raises(dd.CheckpointError, match="b2bd847"):
        dd.import_released(fresh, tmp_path / "r.safetensors")
    assert not list(dd.iter_deltaconv_modules(fresh))


@pytest.mark.parametrize("content,match", [
    (b"garbage, not a pickle", "not a readable torch checkpoint"),
    (None, "expected a state dict, got list"),
])
def test_garbage_pt_is_a_checkpoint_error(tmp_path, content, match):
    file = tmp_path / "r.pt"
    if content is None:
        torch.save([1, 2, 3], file)
    else:
        file.write_bytes(content)
    fresh = tiny_pixart()
    with pytest.raises(dd.CheckpointError, match=match):
        dd.import_released(fresh, file)
    assert not list(dd.iter_deltaconv_modules(fresh))


def test_released_nan_weights_are_refused(released, tmp_path):
    _, state = released
    state["transformer_blocks.1.conv1.conv_up.weight"][0, 0] = float("nan")
    save_file(state, str(tmp_path / "r.safetensors"))
    fresh = tiny_pixart()
    with pytest.raises(dd.CheckpointError, match="proj_in.weight holds 1 NaN/Inf"):
        dd.import_released(fresh, tmp_path / "r.safetensors")
    assert not list(dd.iter_deltaconv_modules(fresh))
