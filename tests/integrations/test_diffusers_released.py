"""Import of released ΔConvFusion checkpoints (`import_released`) from synthetic state dicts in the released key
format: safetensors and .pt files, folders of them, the nests and prefixes older savers wrote, and every refusal
(docs/DESIGN.md §8)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers", reason="the diffusers integration needs the diffusers package")

from converted import randomize_blocks, released_state, run_pixart, run_unet  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tiny_models import tiny_pixart, tiny_unet  # noqa: E402

from deltaconv_kernels.integrations import diffusers as dd  # noqa: E402


@pytest.fixture
def released_pixart():
    model = tiny_pixart()
    sizes = {"transformer_blocks.0.attn1": 5, "transformer_blocks.1.attn1": 9}
    dd.convert(model, kernel_sizes=sizes)
    randomize_blocks(model, seed=7)
    return model, sizes


def test_import_released_safetensors_with_prefix(released_pixart, tmp_path):
    model, sizes = released_pixart
    state = released_state(model)
    state["denoiser.pos_embed.proj.weight"] = torch.randn(2, 2)  # other trainable weights are ignored
    save_file(state, str(tmp_path / "released.safetensors"))
    fresh = tiny_pixart()
    report = dd.import_released(fresh, tmp_path / "released.safetensors")
    assert report.kernel_sizes() == sizes and {r.gate for r in report} == {"sigmoid"}  # released PixArt gate
    assert torch.equal(run_pixart(fresh), run_pixart(model))


def test_import_released_directory_of_pt_files_unet(tmp_path):
    model = tiny_unet("sdxl")
    dd.convert(model)
    randomize_blocks(model, seed=11)
    state = released_state(model, prefix="")
    keys = sorted(state)
    torch.save({"state_dict": {k: state[k] for k in keys[::2]}}, tmp_path / "part1.pt")
    save_file({k: state[k] for k in keys[1::2]}, str(tmp_path / "part2.safetensors"))
    fresh = tiny_unet("sdxl")
    report = dd.import_released(fresh, tmp_path)
    assert report.kernel_sizes() == {n: m.block.kernel_size for n, m in dd.iter_deltaconv_modules(model)}
    assert torch.equal(run_unet(fresh), run_unet(model))


def test_import_released_errors(released_pixart, tmp_path):
    model, _ = released_pixart
    state = released_state(model)
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


# --- released checkpoints as the release writes them --------------------------------------------------------------

@pytest.fixture
def released():
    model = tiny_pixart()
    dd.convert(model, kernel_sizes={"transformer_blocks.0.attn1": 5, "transformer_blocks.1.attn1": 9})
    randomize_blocks(model, seed=7)
    return model, released_state(model, prefix="")


def test_import_base_prefixed_safetensors(released, tmp_path):
    model, state = released
    save_file({f"base:{k}": v for k, v in state.items()}, str(tmp_path / "r.safetensors"))
    fresh = tiny_pixart()
    dd.import_released(fresh, tmp_path / "r.safetensors")
    assert torch.equal(run_pixart(fresh), run_pixart(model))


@pytest.mark.parametrize("nest", ["base", "base_ema"])
def test_import_base_nested_pt(released, tmp_path, nest):
    model, state = released
    torch.save({nest: state}, tmp_path / "r.pt")
    fresh = tiny_pixart()
    dd.import_released(fresh, tmp_path / "r.pt")
    assert torch.equal(run_pixart(fresh), run_pixart(model))


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
