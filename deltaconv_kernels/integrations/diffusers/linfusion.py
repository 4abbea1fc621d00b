"""Trained LinFusion weights for the LinFusion-style baseline (`replace_attention(model, "linfusion")`), so that
quality comparisons use the published distilled modules, not a fresh φ.

A LinFusion checkpoint is a diffusers `ModelMixin` folder: `config.json` with `modules_list` (per replaced layer
`module_name`, `dim_n`, `heads`, `projection_mid_dim`) and weights keyed `<i>.<param>`, where `i` indexes that
list and `param` is `to_q`, `to_k`, `to_v`, `to_out.0` (the attention projections) or `to_q_.{0,1,3}` /
`to_k_.{0,1,3}` (φ_q, φ_k: Linear, LayerNorm, LeakyReLU, Linear). Weights keyed by the layer's module name
instead of its index (`<module_name>.<param>`, e.g. a saved U-Net state dict) are read too. φ maps onto our
`phi_q` / `phi_k`; everything else keeps its name.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import deltaconv_kernels.integrations.diffusers.sites as dm
from deltaconv_kernels.baselines import LinFusionAttention
from deltaconv_kernels.integrations.diffusers.baselines import BaselineAttention, replace_attention
from deltaconv_kernels.integrations.diffusers.files import CheckpointError, check_tensor_values, read_state_dict

CONFIG_NAME = "config.json"
_RENAME = {"to_q_.": "phi_q.", "to_k_.": "phi_k."}


def _module_names(path: Path) -> list[str] | None:
    """The `modules_list` names of a LinFusion folder's config.json (None when there is no config)."""
    config_file = path / CONFIG_NAME if path.is_dir() else path.parent / CONFIG_NAME
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text())
        names = [m["module_name"] for m in config["modules_list"]]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{config_file}: not a LinFusion config with modules_list[i].module_name ({e})") from e
    mids = {m.get("projection_mid_dim") for m in config["modules_list"]} - {None}
    if mids:
        raise CheckpointError(f"{config_file}: projection_mid_dim {sorted(mids)} is not supported: the baseline's φ "
                              "keeps the layer width (projection_mid_dim null)")
    return names


def linfusion_to_layers(state: dict[str, torch.Tensor], names: list[str] | None, sites: list[str]
                        ) -> dict[str, dict[str, torch.Tensor]]:
    """{attn1 layer name: LinFusionAttention state dict} from LinFusion keys."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in state.items():
        head, _, param = key.partition(".")
        if head.isdigit():
            if names is None:
                raise CheckpointError(f"LinFusion key {key!r} is indexed by layer, but no config.json with "
                                      "modules_list names the layers")
            if int(head) >= len(names):
                raise CheckpointError(f"LinFusion key {key!r}: index {head} is beyond the {len(names)} layers")
            layer = names[int(head)]
        else:
            layer = next((s for s in sites if key.startswith(s + ".")), None)
            if layer is None:
                raise CheckpointError(f"LinFusion key {key!r} belongs to no self-attention layer of the model")
            param = key[len(layer) + 1:]
        for old, new in _RENAME.items():
            if param.startswith(old):
                param = new + param[len(old):]
        out.setdefault(layer, {})[param] = t
    return out


def load_linfusion(model_or_pipeline, path) -> list[str]:
    """Put trained LinFusion weights (a LinFusion folder or weight file, see above) into every self-attention of
    `model_or_pipeline`: replaces them with the LinFusion baseline first unless that was done. Everything is
    checked (layer names, keys, shapes, finite values) before the model is touched. Returns the layer names."""
    model = dm.resolve_denoiser(model_or_pipeline)
    path = Path(path)
    sites = [s.name for s in dm.find_sites(model)]
    per_layer = linfusion_to_layers(read_state_dict(path), _module_names(path), sites)
    missing, extra = [s for s in sites if s not in per_layer], [n for n in per_layer if n not in sites]
    if missing or extra:
        raise CheckpointError(f"LinFusion checkpoint {path}: lacks layers {missing[:3]} / has layers the model does "
                              f"not have {extra[:3]}")
    replaced = {n: m for n, m in model.named_modules() if isinstance(m, BaselineAttention)}
    if replaced and not all(isinstance(m.layer, LinFusionAttention) for m in replaced.values()):
        raise CheckpointError(f"{type(model).__name__} holds another baseline: LinFusion weights need "
                              "replace_attention(model, 'linfusion') or an unreplaced model")
    for name in sites:
        attn = replaced[name].layer if replaced else model.get_submodule(name)
        dim, heads = attn.to_q.in_features, attn.heads
        want = LinFusionAttention(dim, heads, qkv_bias=attn.to_q.bias is not None,
                                  out_bias=attn.to_out[0].bias is not None, device="meta").state_dict()
        got = per_layer[name]
        if set(got) != set(want):
            raise CheckpointError(f"LinFusion checkpoint {path}, layer {name}: keys differ: lacks "
                                  f"{sorted(set(want) - set(got))[:4]}, unexpected {sorted(set(got) - set(want))[:4]}")
        bad = [k for k in want if tuple(got[k].shape) != tuple(want[k].shape)]
        if bad:
            raise CheckpointError(f"LinFusion checkpoint {path}, layer {name}: {bad[0]} has shape "
                                  f"{tuple(got[bad[0]].shape)}, the layer expects {tuple(want[bad[0]].shape)}")
        check_tensor_values(got, f"LinFusion checkpoint {path}, layer {name}")
    if not replaced:
        replace_attention(model, "linfusion")
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, BaselineAttention):
                module.layer.load_state_dict(per_layer[name])
    return sites
