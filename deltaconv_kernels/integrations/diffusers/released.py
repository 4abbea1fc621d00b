"""Import of released ΔConvFusion checkpoints (DESIGN §8).

Per replaced layer the released files hold `<wrapper prefix><transformer block path>.conv1.` + `conv_up.weight`
`[Ci, C]`, `conv_up.bias`, `gates.{i}.conv_spatial.weight` `[K, K, Ci]`, `conv_out.weight` / `.bias`,
`conv_pool.weight` / `.bias`; they map one-to-one onto our `proj_in`, `stages.{i}`, `proj_out`, `pool_proj`.
Kernel size and inter_ratio are read off the weights; the gate is not stored, so it defaults to the released one.
Older rainbowneko savers nest the weights under `base` (or `base_ema`); the first released block (repo commit
b2bd847, a depthwise bias per stage) is refused with an error naming it.
"""

from __future__ import annotations

import torch

import deltaconv_kernels.integrations.diffusers.sites as dm
from deltaconv_kernels import validation
from deltaconv_kernels.integrations.diffusers.attention import DeltaConvAttention
from deltaconv_kernels.integrations.diffusers.conversion import ConversionReport, convert
from deltaconv_kernels.integrations.diffusers.files import (
    CheckpointError,
    check_tensor_values,
    check_tensors,
    expected_shapes,
    read_state_dict,
)
from deltaconv_kernels.integrations.diffusers.hub import local_path
from deltaconv_kernels.integrations.diffusers.layers import converted_layers, copy_block_weights

MARKER = ".conv1."
_RENAME = {"conv_up.": "proj_in.", "conv_out.": "proj_out.", "conv_pool.": "pool_proj."}


def _match_block(key_block: str, block_paths: list[str]) -> str | None:
    """The model block path that `key_block` equals or ends with after a wrapper prefix (longest match)."""
    hits = [b for b in block_paths if key_block == b or key_block.endswith("." + b)]
    return max(hits, key=len) if hits else None


def _our_key(sub: str, key: str) -> str:
    if sub.startswith("gates.") and sub.endswith(".conv_spatial.bias"):
        raise CheckpointError(f"released key {key!r}: a depthwise bias per stage is the layout of the first released "
                              "block (repo commit b2bd847), which this ΔConvBlock is not: the bias cannot be folded "
                              "exactly into proj_in because of the conv's zero padding, so it is not imported")
    if sub.startswith("gates."):
        parts = sub.split(".")
        if len(parts) == 4 and parts[2:] == ["conv_spatial", "weight"] and parts[1].isdigit():
            return f"stages.{parts[1]}.weight"
    for old, new in _RENAME.items():
        if sub.startswith(old) and sub[len(old):] in ("weight", "bias"):
            return new + sub[len(old):]
    raise CheckpointError(f"unexpected released key {key!r}: expected conv_up/conv_out/conv_pool .weight/.bias "
                          "or gates.{i}.conv_spatial.weight")


def released_to_layers(state: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """Rename released keys to `<attn1 layer name>.<block param>`; keys without `.conv1.` are ignored."""
    block_paths = [s.name[: -len(".attn1")] for s in dm.find_sites(model)]
    out, prefixes = {}, set()
    for key, t in state.items():
        if MARKER not in key:
            continue
        key_block, sub = key.split(MARKER, 1)
        block = _match_block(key_block, block_paths)
        if block is None:
            raise CheckpointError(f"released key {key!r}: {key_block!r} is no transformer block of "
                                  f"{type(model).__name__} (blocks look like {block_paths[0]!r})")
        prefixes.add(key_block[: len(key_block) - len(block)])
        out[f"{block}.attn1.{_our_key(sub, key)}"] = t
    if not out:
        raise CheckpointError(f"no released ΔConvFusion keys (containing {MARKER!r}) found")
    if len(prefixes) > 1:
        raise CheckpointError(f"released keys carry different wrapper prefixes {sorted(prefixes)}")
    return out


def _layer_configs(tensors: dict[str, torch.Tensor], names: list[str], gate: str) -> dict[str, dict]:
    """dim, K and inter_ratio of each layer, read off its weights."""
    configs = {}
    for name in names:
        w_in = tensors.get(f"{name}.proj_in.weight")
        w_k = tensors.get(f"{name}.stages.0.weight")
        if w_in is None or w_k is None:
            raise CheckpointError(f"released checkpoint lacks {name} (conv1.conv_up.weight or "
                                  "conv1.gates.0.conv_spatial.weight of its block)")
        if w_in.dim() != 2 or w_k.dim() != 3 or w_k.shape[0] != w_k.shape[1]:
            raise CheckpointError(f"{name}: conv_up.weight {tuple(w_in.shape)} must be [Ci, C] and "
                                  f"conv_spatial.weight {tuple(w_k.shape)} must be [K, K, Ci]")
        configs[name] = {"dim": w_in.shape[1], "kernel_size": int(w_k.shape[0]), "gate": gate,
                         "inner": w_in.shape[0]}
    return configs


def _check_converted_as(layers: dict, configs: dict, scales, inter_ratio: float, gate: str | None) -> None:
    """An already converted model must have the checkpoint's structure (its own gate stays unless `gate` given)."""
    for name, module in layers.items():
        b, c = module.block, configs[name]
        have = (b.dim, b.kernel_size, tuple(b.scales), b.inter_ratio)
        want = (c["dim"], c["kernel_size"], tuple(scales), inter_ratio)
        if have != want:
            raise CheckpointError(f"{name}: the converted layer has (dim, K, scales, inter_ratio) {have}, the "
                                  f"released checkpoint {want}")
        if gate is not None and b.gate != gate:
            raise CheckpointError(f"{name}: the converted layer has gate {b.gate!r}, but gate={gate!r} was asked")


def import_released(model_or_pipeline, path, gate: str | None = None, scales=(1.0, 0.5),
                    keep_attention: bool = False, backend: str | None = None) -> ConversionReport | None:
    """Convert `model_or_pipeline` with the layout found in a released ΔConvFusion checkpoint (file, directory or
    Hub repo id) and load its weights. `scales` must have one entry per `gates.{i}`; `gate` defaults to the
    released gate. A model already converted with the same structure (dim, K, scales, inter_ratio per layer) is
    loaded into as it is (returns None; `keep_attention` and `backend` then do not apply)."""
    model = dm.resolve_denoiser(model_or_pipeline)
    scales = validation.check_scales(scales)
    path = local_path(path, "released checkpoint")
    tensors = released_to_layers(read_state_dict(path), model)
    names = [s.name for s in dm.find_sites(model)]
    gate_given = gate
    gate = gate if gate is not None else dm.released_gate(model)
    configs = _layer_configs(tensors, names, gate)
    ratios = {c["inner"] / c["dim"] for c in configs.values()}
    if len(ratios) != 1:
        raise CheckpointError(f"layers have different inter_ratio Ci/C {sorted(ratios)}")
    inter_ratio = ratios.pop()
    n_stages = {int(k.rsplit(".stages.", 1)[1].split(".")[0]) for k in tensors if ".stages." in k}
    if len(tuple(scales)) != len(n_stages):
        raise CheckpointError(f"checkpoint has {len(n_stages)} pyramid stages (gates.*) but scales={tuple(scales)}")
    check_tensors(expected_shapes(configs, scales, inter_ratio), tensors, f"released checkpoint {path}")
    check_tensor_values(tensors, f"released checkpoint {path}")
    if any(isinstance(m, DeltaConvAttention) for m in model.modules()):
        _check_converted_as(converted_layers(model), configs, tuple(scales), inter_ratio, gate_given)
        copy_block_weights(converted_layers(model), tensors)
        return None
    report = convert(model, {n: c["kernel_size"] for n, c in configs.items()}, gate=gate, scales=scales,
                     inter_ratio=inter_ratio, keep_attention=keep_attention, backend=backend)
    copy_block_weights(converted_layers(model), tensors)
    return report
