"""Trained LinFusion weights into the LinFusion baseline (`load_linfusion`): a LinFusion-format folder written
independently of the loader is used as written, and every mismatch is refused before the model is touched."""

import pytest
import torch

pytest.importorskip("diffusers", reason="the diffusers integration needs the diffusers package")
pytest.importorskip("safetensors", reason="the diffusers integration needs the diffusers package")

from tiny_models import tiny_unet, unet_inputs  # noqa: E402

from deltaconv_kernels.integrations.diffusers import BaselineAttention, replace_attention  # noqa: E402


def _unet_out(model, inputs):
    with torch.no_grad():
        return model(*inputs).sample


def _linfusion_checkpoint(model, folder, seed=5):
    """A LinFusion-format folder written from a replaced model (independently of the loader): config.json with
    modules_list and weights keyed <i>.to_q_.0.weight ... (φ under to_q_/to_k_, as the LinFusion code names it)."""
    import json

    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    modules, state = [], {}
    layers = [(n, m.layer) for n, m in model.named_modules() if isinstance(m, BaselineAttention)]
    for i, (name, layer) in enumerate(layers):
        modules.append({"module_name": name, "dim_n": layer.dim, "heads": layer.heads, "projection_mid_dim": None})
        for key, t in layer.state_dict().items():
            key = key.replace("phi_q.", "to_q_.").replace("phi_k.", "to_k_.")
            state[f"{i}.{key}"] = torch.randn(t.shape, generator=g) * 0.3
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "LinFusion", "modules_list": modules}))
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    return state


def test_load_linfusion_checkpoint_uses_the_trained_weights(tmp_path):
    import json

    from safetensors.torch import save_file

    from deltaconv_kernels.integrations.diffusers import load_linfusion

    source = tiny_unet("sd15", seed=0)
    replace_attention(source, "linfusion")
    state = _linfusion_checkpoint(source, tmp_path / "linfusion")
    order = [m["module_name"] for m in json.loads((tmp_path / "linfusion" / "config.json").read_text())[
        "modules_list"]]
    fresh = tiny_unet("sd15", seed=0)
    names = load_linfusion(fresh, tmp_path / "linfusion")
    assert sorted(names) == sorted(order)
    first = fresh.get_submodule(order[0]).layer
    assert torch.equal(first.phi_q[0].weight, state["0.to_q_.0.weight"])
    assert torch.equal(first.phi_k[3].bias, state["0.to_k_.3.bias"])
    assert torch.equal(first.to_v.weight, state["0.to_v.weight"])
    # The same weights keyed by module name (a saved U-Net state dict) load alike, into a replaced model.
    by_name = {f"{order[int(k.split('.', 1)[0])]}.{k.split('.', 1)[1]}": v for k, v in state.items()}
    save_file(by_name, str(tmp_path / "unet.safetensors"))
    other = tiny_unet("sd15", seed=0)
    replace_attention(other, "linfusion")
    load_linfusion(other, tmp_path / "unet.safetensors")
    inputs = unet_inputs(other, height=16, width=12)
    assert torch.equal(_unet_out(other, inputs), _unet_out(fresh, inputs))


def test_load_linfusion_errors(tmp_path):
    import json

    from deltaconv_kernels.integrations.diffusers import CheckpointError, load_linfusion

    source = tiny_unet("sd15", seed=0)
    replace_attention(source, "linfusion")
    _linfusion_checkpoint(source, tmp_path / "ok")
    config = json.loads((tmp_path / "ok" / "config.json").read_text())
    config["modules_list"] = config["modules_list"][1:]
    (tmp_path / "ok" / "config.json").write_text(json.dumps(config))
    fresh = tiny_unet("sd15", seed=0)
    with pytest.raises(CheckpointError, match="index .* is beyond"):
        load_linfusion(fresh, tmp_path / "ok")
    assert not [m for m in fresh.modules() if isinstance(m, BaselineAttention)]  # untouched
    other = tiny_unet("sd15", seed=0)
    replace_attention(other, "sdpa")
    _linfusion_checkpoint(source, tmp_path / "ok2")
    with pytest.raises(CheckpointError, match="another baseline"):
        load_linfusion(other, tmp_path / "ok2")
