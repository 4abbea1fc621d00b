"""Loading converted models: `load` (a `save` checkpoint into a model, converting it as recorded) and
`from_pretrained` (a `save_pretrained` model or pipeline folder, local or on the Hub, built from its config).
Loading is strict: it names every mismatch, and every check runs before the model is touched."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

import deltaconv_kernels.integrations.diffusers.sites as dm
from deltaconv_kernels import validation
from deltaconv_kernels.integrations.diffusers.attention import DeltaConvAttention
from deltaconv_kernels.integrations.diffusers.conversion import ConversionReport, convert
from deltaconv_kernels.integrations.diffusers.files import (
    BASE_NAME,
    CONFIG_NAME,
    FORMAT,
    PRETRAINED_FORMAT,
    PRETRAINED_VERSION,
    VERSION,
    WEIGHTS_NAME,
    CheckpointError,
    check_tensor_values,
    check_tensors,
    denoiser_subfolder,
    expected_shapes,
    read_weights,
)
from deltaconv_kernels.integrations.diffusers.hub import checkpoint_folder, local_path, split_hub_kwargs
from deltaconv_kernels.integrations.diffusers.layers import converted_layers, copy_block_weights, layer_config
from deltaconv_kernels.integrations.diffusers.saving import block_keys
from deltaconv_kernels.modules import DeltaConvBlock


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
        want, have = config["layers"][name], layer_config(module)
        same_scale = math.isclose(want["gate_scale"], have["gate_scale"], rel_tol=1e-12)
        if {**want, "gate_scale": 0} != {**have, "gate_scale": 0} or not same_scale:
            raise CheckpointError(f"{name}: model layer {have} differs from checkpoint {want}")
        b = module.block
        if list(b.scales) != config["scales"] or b.inter_ratio != config["inter_ratio"]:
            raise CheckpointError(f"{name}: scales/inter_ratio {b.scales}/{b.inter_ratio} differ from checkpoint "
                                  f"{config['scales']}/{config['inter_ratio']}")


def load(model_or_pipeline, path, keep_attention: bool = False, backend: str | None = None) -> ConversionReport | None:
    """Restore a `save`d checkpoint: converts `model_or_pipeline` as recorded (or checks that an already converted
    model matches), then loads the weights. Every check runs before the model is touched. Returns the
    ConversionReport when it converted, else None. `path`: a `save` folder, or a `save_pretrained` model or
    pipeline folder, local or a Hub repo id."""
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


def _read_meta(folder: Path) -> dict:
    """Model class (config.json) and the format / kept-attention record in the base file's safetensors header."""
    base_file = folder / BASE_NAME
    if not base_file.is_file():
        raise CheckpointError(f"no {BASE_NAME} in {folder}: not a folder written by save_pretrained")
    with safe_open(str(base_file), "pt") as f:
        header = f.metadata() or {}
    if header.get("deltaconv_format") != PRETRAINED_FORMAT or header.get("deltaconv_version") != str(
            PRETRAINED_VERSION):
        raise CheckpointError(f"{base_file}: format {header.get('deltaconv_format')!r} version "
                              f"{header.get('deltaconv_version')!r}, expected {PRETRAINED_FORMAT!r} version "
                              f"{PRETRAINED_VERSION}")
    class_name = json.loads((folder / "config.json").read_text()).get("_class_name")
    if class_name not in dm.SUPPORTED:
        raise CheckpointError(f"{folder}/config.json: model class {class_name!r} is not one of {list(dm.SUPPORTED)}")
    return {"class": class_name, "keep_attention": header.get("keep_attention") == "true"}


def _is_device(device_map) -> bool:
    return isinstance(device_map, (str, int, torch.device)) and str(device_map) not in (
        "auto", "balanced", "balanced_low_0", "sequential")


def _place(model, device_map):
    if device_map is None:
        return model
    if _is_device(device_map):
        return model.to(device_map)
    from accelerate import dispatch_model, infer_auto_device_map  # deferred: only a device map needs accelerate
    if isinstance(device_map, str):
        device_map = infer_auto_device_map(model, no_split_module_classes=["BasicTransformerBlock"])
    if not isinstance(device_map, dict):
        raise TypeError(f"device_map must be a device, 'auto' or a {{module name: device}} dict, got {device_map!r}")
    return dispatch_model(model, device_map=device_map)


def load_model_folder(folder: Path, dtype=None, device_map=None, low_cpu_mem_usage: bool = True,
                      backend: str | None = None):
    """The converted denoiser of a converted model folder, every tensor checked before it is used."""
    # deferred: the optional diffusers and accelerate (`import deltaconv_kernels.integrations.diffusers` works
    # without them; sites.require_diffusers says what is missing when a model is resolved)
    import diffusers
    from accelerate import init_empty_weights

    meta = _read_meta(folder)
    base_file = folder / BASE_NAME
    cls = getattr(diffusers, meta["class"])
    config = cls.load_config(str(folder))
    if low_cpu_mem_usage:
        with init_empty_weights():
            model = cls.from_config(config)
    else:
        model = cls.from_config(config)
    base = load_file(str(base_file))
    load(model, folder, keep_attention=meta["keep_attention"], backend=backend)  # checks, converts, loads blocks
    blocks = block_keys(model)
    expected = {k: t for k, t in model.state_dict().items() if k not in blocks}
    missing, extra = sorted(set(expected) - set(base)), sorted(set(base) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{base_file} does not fit {meta['class']} converted as {CONFIG_NAME} says: "
                              f"missing {len(missing)} tensors (e.g. {missing[:3]}), unexpected {len(extra)} "
                              f"(e.g. {extra[:3]})")
    for key, t in expected.items():
        if tuple(t.shape) != tuple(base[key].shape):
            raise CheckpointError(f"{base_file}: {key} has shape {tuple(base[key].shape)}, the model expects "
                                  f"{tuple(t.shape)}")
    model.load_state_dict(base, strict=False, assign=low_cpu_mem_usage)
    if dtype is None:  # the saved dtype (the blocks were materialised in the default one)
        dtype = next((t.dtype for t in base.values() if t.is_floating_point()), None)
    if dtype is not None and any(t.is_floating_point() and t.dtype != dtype for t in model.state_dict().values()):
        model = model.to(dtype)
    return _place(model, device_map).eval()


def from_pretrained(path_or_repo_id, dtype=None, device_map=None, low_cpu_mem_usage: bool = True,
                    backend: str | None = None, *, torch_dtype=None, **kwargs):
    """The converted pipeline (pipeline folder) or model (model folder) that `save_pretrained` wrote, local or a
    Hub repo id (through huggingface_hub: `revision`, `cache_dir`, `token`, `local_files_only`, HF_HUB_OFFLINE).

    `dtype` casts (None keeps the saved dtypes; `torch_dtype` is its older name, accepted as an alias and passed
    on as diffusers wants it, so no deprecation warning comes from this call); `device_map` is a device, "auto" or
    a {module: device} dict (accelerate's dispatch) for a model, and goes to diffusers for a pipeline;
    `low_cpu_mem_usage` builds the model on the meta device and assigns the saved tensors. Other keyword arguments
    go to the pipeline's `DiffusionPipeline.from_pretrained` (a model folder takes none)."""
    if torch_dtype is not None:
        if dtype is not None:
            raise TypeError("from_pretrained: pass dtype or its alias torch_dtype, not both")
        dtype = torch_dtype
    hub, rest = split_hub_kwargs(kwargs)
    folder = local_path(path_or_repo_id, "converted model or pipeline folder", **hub)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder")
    sub = denoiser_subfolder(folder)
    if sub is None:
        if rest:
            raise TypeError(f"unexpected arguments {sorted(rest)} for a model folder")
        return load_model_folder(folder, dtype, device_map, low_cpu_mem_usage, backend)
    if device_map is not None and not _is_device(device_map):
        raise TypeError(f"device_map for a pipeline must be one device (all components go there), got "
                        f"{device_map!r}; load the model folder {folder / sub} for a per-module map")
    from diffusers import DiffusionPipeline  # deferred: the optional diffusers (see load_model_folder)
    model = load_model_folder(folder / sub, dtype, None, low_cpu_mem_usage, backend)
    pipe = DiffusionPipeline.from_pretrained(str(folder), **{sub: model}, **dm.dtype_kwarg(dtype),
                                             low_cpu_mem_usage=low_cpu_mem_usage, **rest)
    return pipe if device_map is None else pipe.to(device_map)
