"""save / load of converted models (bit-identical round trip, every strict check) and import of released
ΔConvFusion checkpoints from synthetic state dicts in the released key format (docs/DESIGN.md §8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers", reason="the diffusers integration needs the diffusers package")

from safetensors.torch import load_file, save_file  # noqa: E402
from tiny_models import meta_model, pixart_inputs, tiny_pixart, tiny_unet, unet_inputs  # noqa: E402

from deltaconv_kernels.integrations import diffusers as dd  # noqa: E402
from deltaconv_kernels.integrations.diffusers_checkpoint import CONFIG_NAME, WEIGHTS_NAME  # noqa: E402


def _randomize(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dd.deltaconv_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _run_unet(model):
    with torch.no_grad():
        return model(*unet_inputs(model, batch=2, height=20, width=12)).sample


def _run_pixart(model):
    with torch.no_grad():
        return model(**pixart_inputs(model, batch=2, height=20, width=12)).sample


@pytest.fixture
def saved_unet(tmp_path):
    model = tiny_unet("sd15")
    sizes = {n: 3 + 2 * (i % 3) for i, n in enumerate(dd.convert(tiny_unet("sd15")).kernel_sizes())}
    dd.convert(model, kernel_sizes=sizes)
    _randomize(model)
    dd.save(model, tmp_path / "ckpt")
    return model, tmp_path / "ckpt", sizes


def test_save_load_bit_identical_unet(saved_unet):
    model, path, sizes = saved_unet
    assert sorted(p.name for p in path.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])  # no temp files left
    fresh = tiny_unet("sd15")  # same seed: same base weights
    report = dd.load(fresh, path)
    assert report.kernel_sizes() == sizes
    assert torch.equal(_run_unet(fresh), _run_unet(model))
    # Loading into an already converted model (e.g. resuming) checks it and restores the weights.
    again = tiny_unet("sd15")
    dd.convert(again, kernel_sizes=sizes)
    assert dd.load(again, path) is None
    assert torch.equal(_run_unet(again), _run_unet(model))


def test_save_load_bit_identical_pixart_bf16_with_kept_attention(tmp_path):
    model = tiny_pixart(dtype=torch.bfloat16)
    dd.convert(model, gate="scaled", scales=(1.0, 0.5, 0.25))
    _randomize(model)
    dd.save(model, tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["scales"] == [1.0, 0.5, 0.25] and config["fingerprint"]["class"] == "PixArtTransformer2DModel"
    fresh = tiny_pixart(dtype=torch.bfloat16)
    dd.load(fresh, tmp_path, keep_attention=True)
    assert all(m.attention is not None for _, m in dd.iter_deltaconv_modules(fresh))
    assert {m.block.gate for _, m in dd.iter_deltaconv_modules(fresh)} == {"scaled"}
    assert torch.equal(_run_pixart(fresh), _run_pixart(model))


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


# --- released ΔConvFusion checkpoints -------------------------------------------------------------------------

_RELEASED_NAMES = {"proj_in": "conv_up", "proj_out": "conv_out", "pool_proj": "conv_pool"}


def _released_state(model, prefix="denoiser."):
    """The converted model's block weights under the released key names (written independently of the
    importer: block path + `.conv1.` + released parameter name)."""
    state = {}
    for name, layer in dd.iter_deltaconv_modules(model):
        block_path = prefix + name[: -len(".attn1")]
        for key, t in layer.block.state_dict().items():
            head, rest = key.split(".", 1)
            if head == "stages":
                i = rest.split(".")[0]
                released = f"gates.{i}.conv_spatial.weight"
            else:
                released = f"{_RELEASED_NAMES[head]}.{rest}"
            state[f"{block_path}.conv1.{released}"] = t.clone()
    return state


@pytest.fixture
def released_pixart():
    model = tiny_pixart()
    sizes = {"transformer_blocks.0.attn1": 5, "transformer_blocks.1.attn1": 9}
    dd.convert(model, kernel_sizes=sizes)
    _randomize(model, seed=7)
    return model, sizes


def test_import_released_safetensors_with_prefix(released_pixart, tmp_path):
    model, sizes = released_pixart
    state = _released_state(model)
    state["denoiser.pos_embed.proj.weight"] = torch.randn(2, 2)  # other trainable weights are ignored
    save_file(state, str(tmp_path / "released.safetensors"))
    fresh = tiny_pixart()
    report = dd.import_released(fresh, tmp_path / "released.safetensors")
    assert report.kernel_sizes() == sizes and {r.gate for r in report} == {"sigmoid"}  # released PixArt gate
    assert torch.equal(_run_pixart(fresh), _run_pixart(model))


def test_import_released_directory_of_pt_files_unet(tmp_path):
    model = tiny_unet("sdxl")
    dd.convert(model)
    _randomize(model, seed=11)
    state = _released_state(model, prefix="")
    keys = sorted(state)
    torch.save({"state_dict": {k: state[k] for k in keys[::2]}}, tmp_path / "part1.pt")
    save_file({k: state[k] for k in keys[1::2]}, str(tmp_path / "part2.safetensors"))
    fresh = tiny_unet("sdxl")
    report = dd.import_released(fresh, tmp_path)
    assert report.kernel_sizes() == {n: m.block.kernel_size for n, m in dd.iter_deltaconv_modules(model)}
    assert torch.equal(_run_unet(fresh), _run_unet(model))


def test_import_released_errors(released_pixart, tmp_path):
    model, _ = released_pixart
    state = _released_state(model)
    cases = {
        "empty": ({"denoiser.x.weight": torch.zeros(1)}, "no released"),
        "missing": ({k: v for k, v in state.items() if "blocks.1." not in k}, "lacks transformer_blocks.1.attn1"),
        "unknown": ({**state, "denoiser.transformer_blocks.0.conv1.conv_mid.weight": torch.zeros(1)},
                    "unexpected released key"),
        "notblock": ({**state, "denoiser.nowhere.3.conv1.conv_up.weight": torch.zeros(1)},
                     "is no transformer block"),
        "shape": ({**state, "denoiser.transformer_blocks.0.conv1.conv_pool.bias": torch.zeros(3)},
                  "conv_pool|pool_proj.bias has shape"),
    }
    for case, (bad, match) in cases.items():
        save_file(bad, str(tmp_path / f"{case}.safetensors"))
        fresh = tiny_pixart()
        with pytest.raises(dd.CheckpointError, match=match):
            dd.import_released(fresh, tmp_path / f"{case}.safetensors")
        assert not list(dd.iter_deltaconv_modules(fresh)), case
    save_file(state, str(tmp_path / "good.safetensors"))
    with pytest.raises(dd.CheckpointError, match="2 pyramid stages"):
        dd.import_released(tiny_pixart(), tmp_path / "good.safetensors", scales=(1.0,))
    dup = tmp_path / "dup"
    dup.mkdir()
    save_file(state, str(dup / "a.safetensors"))
    save_file(state, str(dup / "b.safetensors"))
    with pytest.raises(dd.CheckpointError, match="more than one file"):
        dd.import_released(tiny_pixart(), dup)
    with pytest.raises(dd.CheckpointError, match="does not exist"):
        dd.import_released(tiny_pixart(), tmp_path / "missing.pt")
