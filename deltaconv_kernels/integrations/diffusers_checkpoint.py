"""`save` / `load` of the ΔConvBlock weights of a converted diffusers model: `deltaconv.safetensors` (keys
`<layer name>.<block parameter>`, e.g. `...attn1.stages.0.weight`) plus `deltaconv.json` (kernel size, gate and
gate scale per layer, scales, inter_ratio, base-model fingerprint). Loading is strict: it names every mismatch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from deltaconv_kernels import validation
from deltaconv_kernels.fileio import atomic_write
from deltaconv_kernels.integrations import diffusers_models as dm
from deltaconv_kernels.integrations.diffusers_attention import DeltaConvAttention
from deltaconv_kernels.integrations.diffusers_convert import ConversionReport, convert, converted_layers
from deltaconv_kernels.modules import DeltaConvBlock

WEIGHTS_NAME = "deltaconv.safetensors"
CONFIG_NAME = "deltaconv.json"
FORMAT = "deltaconv_kernels.diffusers"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint does not match the model it is loaded into (or is malformed)."""


def _layer_config(module) -> dict:
    b = module.block
    return {"dim": b.dim, "kernel_size": b.kernel_size, "gate": b.gate, "gate_scale": b.gate_scale}


def save(model_or_pipeline, path, push_to_hub: bool = False, repo_id: str | None = None, private: bool | None = None,
         token: str | None = None, commit_message: str | None = None) -> Path:
    """Write the ΔConvBlock weights and config of a converted model into directory `path` (created if needed); with
    `push_to_hub`, then upload that folder to the Hub repo `repo_id` (`diffusers_hub.push_folder`)."""
    if push_to_hub and not repo_id:
        raise ValueError("save: push_to_hub=True needs repo_id='owner/name'")  # before writing anything
    model = dm.resolve_denoiser(model_or_pipeline)
    layers = converted_layers(model)
    blocks = [m.block for m in layers.values()]
    first = blocks[0]
    tensors = {}
    for name, module in layers.items():
        for key, t in module.block.state_dict().items():
            if t.is_meta:
                raise ValueError(f"{name}.{key} is on the meta device: there are no weights to save")
            tensors[f"{name}.{key}"] = t.detach().to("cpu").contiguous().clone()
    config = {
        "format": FORMAT, "version": VERSION, "fingerprint": dm.fingerprint(model),
        "scales": list(first.scales), "inter_ratio": first.inter_ratio,
        "layers": {name: _layer_config(m) for name, m in layers.items()},
    }
    inits = {name: m.init_record for name, m in layers.items() if getattr(m, "init_record", None)}
    if inits:  # how the blocks were started (docs/DESIGN.md §10), for the record; load ignores it
        config["init"] = inits
    if any(b.scales != first.scales or b.inter_ratio != first.inter_ratio for b in blocks):
        raise ValueError("all converted layers must share scales and inter_ratio to be saved together")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / WEIGHTS_NAME, lambda f: f.write(safetensors_bytes(tensors, metadata={"format": FORMAT})))
    atomic_write(out / CONFIG_NAME, lambda f: f.write(json.dumps(config, indent=1).encode()))
    if push_to_hub:
        from deltaconv_kernels.integrations.diffusers_hub import push_folder  # (diffusers_hub imports this module)

        push_folder(out, repo_id, private, token, commit_message)
    return out


def read_config(path) -> dict:
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(f"no {CONFIG_NAME} in {path}: not a deltaconv checkpoint directory")
    try:
        config = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(config).__name__}")
    if config.get("format") != FORMAT or config.get("version") != VERSION:
        raise CheckpointError(f"{file}: format {config.get('format')!r} version {config.get('version')!r}, "
                              f"expected {FORMAT!r} version {VERSION}")
    check_config(config, file)
    return config


def _config_error(file, where: str, e: Exception) -> CheckpointError:
    return CheckpointError(f"{file}: {where}: {e}")


def check_config(config: dict, file) -> None:
    """Every entry `load` uses, checked before anything is changed: a malformed file is a CheckpointError naming
    the file and the entry, never a TypeError after `convert()` has run."""
    for key, kind in (("fingerprint", dict), ("layers", dict), ("scales", list)):
        if not isinstance(config.get(key), kind):
            got = "missing" if key not in config else f"a {type(config[key]).__name__}"
            raise CheckpointError(f"{file}: {key!r} must be a JSON {'object' if kind is dict else 'array'}, "
                                  f"got {got}")
    fp = config["fingerprint"]
    if not all(isinstance(fp.get(k), str) for k in ("class", "config_sha256")):
        raise CheckpointError(f"{file}: 'fingerprint' must hold the strings 'class' and 'config_sha256', got {fp}")
    try:
        scales = validation.check_scales(config["scales"])
        validation.check_inter_ratio(config.get("inter_ratio"))
    except (TypeError, ValueError) as e:
        raise _config_error(file, "scales/inter_ratio", e) from e
    if not config["layers"]:
        raise CheckpointError(f"{file}: 'layers' is empty")
    for name, layer in config["layers"].items():
        if not isinstance(layer, dict):
            raise CheckpointError(f"{file}: layer {name}: expected an object, got {type(layer).__name__}")
        missing = [k for k in ("dim", "kernel_size", "gate", "gate_scale") if k not in layer]
        if missing:
            raise CheckpointError(f"{file}: layer {name}: lacks {missing}")
        try:
            validation.check_gate(layer["gate"])
            validation.check_gate_scale(layer["gate_scale"])
            # Builds nothing (meta device): runs every constructor check on this layer's settings.
            DeltaConvBlock(layer["dim"], layer["kernel_size"], scales, config["inter_ratio"], layer["gate"],
                           layer["gate_scale"], device="meta")
        except (TypeError, ValueError) as e:
            raise _config_error(file, f"layer {name}", e) from e


def read_weights(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a truncated or corrupt file is a CheckpointError naming it."""
    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises its own SafetensorError, OSError, or ValueError by case
        raise CheckpointError(f"{file}: not a readable safetensors file ({type(e).__name__}: {e})") from e


def check_tensor_values(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Floating tensors with only finite values (NaN/Inf weights would poison every output)."""
    for key, t in tensors.items():
        if not t.is_floating_point():
            raise CheckpointError(f"{what}: {key} has dtype {t.dtype}; ΔConvBlock weights are floating point")
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"{what}: {key} holds {bad} NaN/Inf values")


def _check_architecture(model, config: dict) -> None:
    have, want = dm.fingerprint(model), config["fingerprint"]
    if have != want:
        raise CheckpointError(f"checkpoint is from another architecture: it was saved from {want['class']} with "
                              f"config hash {want['config_sha256'][:12]}, this model is {have['class']} with "
                              f"{have['config_sha256'][:12]} (entries {dm.ARCHITECTURE_KEYS[have['class']]})")


def _check_layer_names(expected, found, what: str) -> None:
    missing = [n for n in expected if n not in found]
    extra = [n for n in found if n not in expected]
    if missing:
        raise CheckpointError(f"{what} lacks {len(missing)} layers of the model, e.g. {missing[:3]}")
    if extra:
        raise CheckpointError(f"{what} has {len(extra)} layers the model does not have, e.g. {extra[:3]}")


def _check_converted(layers: dict, config: dict) -> None:
    """An already converted model must have been converted exactly as the checkpoint says."""
    for name, module in layers.items():
        want, have = config["layers"][name], _layer_config(module)
        same_scale = math.isclose(want["gate_scale"], have["gate_scale"], rel_tol=1e-12)
        if {**want, "gate_scale": 0} != {**have, "gate_scale": 0} or not same_scale:
            raise CheckpointError(f"{name}: model layer {have} differs from checkpoint {want}")
        b = module.block
        if list(b.scales) != config["scales"] or b.inter_ratio != config["inter_ratio"]:
            raise CheckpointError(f"{name}: scales/inter_ratio {b.scales}/{b.inter_ratio} differ from checkpoint "
                                  f"{config['scales']}/{config['inter_ratio']}")


def expected_shapes(layer_configs: dict, scales, inter_ratio) -> dict[str, tuple[int, ...]]:
    """`<layer>.<param>` -> shape for blocks with these configs (built on the meta device: no memory)."""
    shapes = {}
    for name, c in layer_configs.items():
        block = DeltaConvBlock(c["dim"], c["kernel_size"], tuple(scales), inter_ratio, c["gate"], device="meta")
        shapes.update({f"{name}.{k}": tuple(t.shape) for k, t in block.state_dict().items()})
    return shapes


def check_tensors(shapes: dict, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Exactly the expected keys with the expected shapes, else a CheckpointError naming the first differences."""
    missing = sorted(set(shapes) - set(tensors))
    extra = sorted(set(tensors) - set(shapes))
    if missing:
        raise CheckpointError(f"{what} lacks {len(missing)} tensors, e.g. {missing[:3]}")
    if extra:
        raise CheckpointError(f"{what} has {len(extra)} unexpected tensors, e.g. {extra[:3]}")
    for key, shape in shapes.items():
        if tuple(tensors[key].shape) != shape:
            raise CheckpointError(f"{what}: {key} has shape {tuple(tensors[key].shape)}, the model expects {shape}")


def copy_block_weights(layers: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Copy `<layer>.<param>` tensors into the blocks; blocks on the meta device are first materialised (on
    `materialize_device`), since copying into a meta tensor does nothing."""
    with torch.no_grad():
        for name, module in layers.items():
            if any(t.is_meta for t in module.block.state_dict().values()):
                module.block.to_empty(device=materialize_device(module))
            for key, target in module.block.state_dict(keep_vars=True).items():
                target.copy_(tensors[f"{name}.{key}"])


def materialize_device(module) -> torch.device:
    """Where a meta-device ΔConvBlock of a `DeltaConvAttention` gets storage: the device of the layer's kept
    attention when that has real weights, else the CPU (move the model afterwards)."""
    for t in module.state_dict().values():
        if not t.is_meta:
            return t.device
    return torch.device("cpu")


def load(model_or_pipeline, path, keep_attention: bool = False, backend: str | None = None) -> ConversionReport | None:
    """Restore a `save`d checkpoint: converts `model_or_pipeline` as recorded (or checks that an already converted
    model matches), then loads the weights. Every check runs before the model is touched. Returns the
    ConversionReport when it converted, else None. `path`: a `save` folder, or a `save_pretrained` model or
    pipeline folder, local or a Hub repo id."""
    from deltaconv_kernels.integrations.diffusers_pretrained import checkpoint_folder  # (imports this module)
    model = dm.resolve_denoiser(model_or_pipeline)
    path = checkpoint_folder(path)
    config = read_config(path)
    _check_architecture(model, config)
    weights = Path(path) / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"no {WEIGHTS_NAME} in {path}")
    tensors = read_weights(weights)
    per_layer = config["layers"]
    _check_layer_names([s.name for s in dm.find_sites(model)], list(per_layer), f"checkpoint {path}")
    what = f"checkpoint {weights}"
    check_tensors(expected_shapes(per_layer, config["scales"], config["inter_ratio"]), tensors, what)
    check_tensor_values(tensors, what)
    if _is_converted(model):
        layers = converted_layers(model)
        _check_converted(layers, config)
        copy_block_weights(layers, tensors)
        return None
    gates = {c["gate"] for c in per_layer.values()}
    if len(gates) != 1:
        raise CheckpointError(f"checkpoint mixes gates {sorted(gates)}: convert the model yourself, then load")
    report = convert(model, {n: c["kernel_size"] for n, c in per_layer.items()}, gate=gates.pop(),
                     scales=tuple(config["scales"]), inter_ratio=config["inter_ratio"],
                     keep_attention=keep_attention, backend=backend)
    layers = converted_layers(model)
    for name, module in layers.items():  # restore the recorded gate scale exactly (it may be a custom one)
        module.block.gate_scale = float(per_layer[name]["gate_scale"])
    copy_block_weights(layers, tensors)
    return report


def _is_converted(model) -> bool:
    return any(isinstance(m, DeltaConvAttention) for m in model.modules())
