"""`save_pretrained` / `from_pretrained` of converted diffusers models and pipelines: one folder (or Hub repo)
holding everything, loaded back in one call.

Layout: a pipeline folder is what diffusers' `pipe.save_pretrained` writes, except that the denoiser's subfolder
(`unet/`, `transformer/`) is a *converted model folder*; a model folder alone is the same as that subfolder:

    config.json                  the base model's diffusers config (unchanged)
    deltaconv_base.safetensors   every tensor of the converted model except the ΔConvBlocks (a kept attn1 under
                                 `...attn1.attention.*`); its header records the format and whether attn1 was kept
    deltaconv.json / .safetensors  the ΔConvBlocks and the conversion (`save`)

    diffusion_pytorch_model.safetensors.index.json   a guard (below)

There is deliberately no diffusers weights file: the original attn1 weights do not exist any more, and a diffusers
loader that finds a weights file with them missing initialises them at random (silently with
`low_cpu_mem_usage=False`). Instead the guard index names a single shard that does not exist and whose name is the
advice, so diffusers' own `from_pretrained` fails loudly, saying what to call. `convert` makes the model's own
`save_pretrained` (which `pipe.save_pretrained` calls) write this layout too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from deltaconv_kernels.fileio import atomic_write
from deltaconv_kernels.integrations import diffusers_models as dm
from deltaconv_kernels.integrations.diffusers_checkpoint import CONFIG_NAME, CheckpointError, load, save
from deltaconv_kernels.integrations.diffusers_convert import converted_layers
from deltaconv_kernels.integrations.diffusers_hub import local_path, push_folder, split_hub_kwargs

BASE_NAME = "deltaconv_base.safetensors"
GUARD_NAME = "diffusion_pytorch_model.safetensors.index.json"  # diffusers' sharded-checkpoint index name
ADVICE = "converted-by-deltaconv_kernels--load-with-deltaconv_kernels.integrations.diffusers.from_pretrained"
FORMAT = "deltaconv_kernels.diffusers.pretrained"
VERSION = 1
DENOISERS = ("unet", "transformer")


def _block_keys(model) -> set[str]:
    return {f"{name}.block.{key}" for name, m in converted_layers(model).items() for key in m.block.state_dict()}


def save_model_folder(model, directory) -> Path:
    """Write one converted denoiser as a converted model folder (module docstring)."""
    out = Path(directory)
    blocks = _block_keys(model)
    kept = [n for n, m in converted_layers(model).items() if m.attention is not None]
    if kept and len(kept) != len(converted_layers(model)):
        raise ValueError(f"only {len(kept)} of the converted layers kept their attention: save_pretrained needs "
                         "all or none (convert with keep_attention=True or False)")
    base = {}
    for key, t in model.state_dict().items():
        if key in blocks:
            continue
        if t.is_meta:
            raise ValueError(f"{key} is on the meta device: there are no weights to save")
        base[key] = t.detach().to("cpu").contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save(model, out)  # the ΔConvBlocks (checks they are real), then the rest
    model.save_config(out)
    header = {"format": "pt", "deltaconv_format": FORMAT, "deltaconv_version": str(VERSION),
              "keep_attention": "true" if kept else "false"}
    atomic_write(out / BASE_NAME, lambda f: f.write(safetensors_bytes(base, metadata=header)))
    guard = {"metadata": {"note": "ΔConv-converted model: the attn1 weights are not a diffusers checkpoint; load "
                                  "this folder with deltaconv_kernels.integrations.diffusers.from_pretrained"},
             "weight_map": {"deltaconv": ADVICE}}
    atomic_write(out / GUARD_NAME, lambda f: f.write(json.dumps(guard, indent=1).encode()))
    return out


class SaveConverted:
    """Replaces `save_pretrained` on a converted denoiser (set by `convert`): diffusers' `pipe.save_pretrained`
    calls it for the denoiser, so a converted pipeline saved the diffusers way is a converted folder too."""

    def __init__(self, model):
        self.model = model

    def __call__(self, save_directory, **kwargs):
        unsupported = {k: v for k, v in kwargs.items() if _DEFAULTS.get(k, object()) != v}
        if unsupported:
            raise ValueError(f"save_pretrained of a converted model takes only the folder, got {unsupported} "
                             "(it writes safetensors, unsharded; push a saved folder with huggingface_hub."
                             "upload_folder)")
        return save_model_folder(self.model, save_directory)


_DEFAULTS = {"push_to_hub": False, "safe_serialization": True, "variant": None, "max_shard_size": None,
             "is_main_process": True}


def install_save(model) -> None:
    model.__dict__["save_pretrained"] = SaveConverted(model)


def uninstall_save(model) -> None:
    model.__dict__.pop("save_pretrained", None)


def save_pretrained(pipe_or_model, directory, push_to_hub: bool = False, repo_id: str | None = None,
                    private: bool | None = None, token: str | None = None, commit_message: str | None = None) -> Path:
    """Write a converted pipeline (diffusers' pipeline folder with a converted denoiser subfolder) or a converted
    model (a converted model folder) into `directory`, ready for `from_pretrained`. With `push_to_hub`, the folder is
    then uploaded to the Hub repo `repo_id` (created if missing) through huggingface_hub, as diffusers does."""
    if push_to_hub and not repo_id:
        raise ValueError("save_pretrained: push_to_hub=True needs repo_id='owner/name'")  # before writing anything
    model = dm.resolve_denoiser(pipe_or_model)
    converted_layers(model)  # raises when not converted
    if model is pipe_or_model:
        out = save_model_folder(model, directory)
    else:
        install_save(model)  # a pipeline's denoiser converted before this existed, or copied
        pipe_or_model.save_pretrained(str(directory))
        out = Path(directory)
    if push_to_hub:
        push_folder(out, repo_id, private, token, commit_message)
    return out


def _read_meta(folder: Path) -> dict:
    """Model class (config.json) and the format / kept-attention record in the base file's safetensors header."""
    from safetensors import safe_open
    base_file = folder / BASE_NAME
    if not base_file.is_file():
        raise CheckpointError(f"no {BASE_NAME} in {folder}: not a folder written by save_pretrained")
    with safe_open(str(base_file), "pt") as f:
        header = f.metadata() or {}
    if header.get("deltaconv_format") != FORMAT or header.get("deltaconv_version") != str(VERSION):
        raise CheckpointError(f"{base_file}: format {header.get('deltaconv_format')!r} version "
                              f"{header.get('deltaconv_version')!r}, expected {FORMAT!r} version {VERSION}")
    class_name = json.loads((folder / "config.json").read_text()).get("_class_name")
    if class_name not in dm.SUPPORTED:
        raise CheckpointError(f"{folder}/config.json: model class {class_name!r} is not one of {list(dm.SUPPORTED)}")
    return {"class": class_name, "keep_attention": header.get("keep_attention") == "true"}


def denoiser_subfolder(folder: Path) -> str | None:
    """The subfolder of a pipeline folder that holds the converted denoiser, None for a model folder."""
    if not (folder / "model_index.json").is_file():
        return None
    found = [name for name in DENOISERS if (folder / name / BASE_NAME).is_file()]
    if len(found) != 1:
        raise CheckpointError(f"{folder} is a pipeline folder, but {'none' if not found else 'several'} of its "
                              f"{list(DENOISERS)} subfolders hold a converted model ({BASE_NAME})")
    return found[0]


def checkpoint_folder(path_or_repo_id, **hub_kwargs) -> Path:
    """The folder holding deltaconv.json for a `load`: a `save` folder, a converted model or pipeline folder,
    each local or a Hub repo id."""
    folder = local_path(path_or_repo_id, "deltaconv checkpoint", **hub_kwargs)
    if folder.is_dir() and not (folder / CONFIG_NAME).is_file():
        sub = denoiser_subfolder(folder)
        if sub is not None:
            return folder / sub
    return folder


def _is_device(device_map) -> bool:
    return isinstance(device_map, (str, int, torch.device)) and str(device_map) not in (
        "auto", "balanced", "balanced_low_0", "sequential")


def _place(model, device_map):
    if device_map is None:
        return model
    if _is_device(device_map):
        return model.to(device_map)
    from accelerate import dispatch_model, infer_auto_device_map
    if isinstance(device_map, str):
        device_map = infer_auto_device_map(model, no_split_module_classes=["BasicTransformerBlock"])
    if not isinstance(device_map, dict):
        raise TypeError(f"device_map must be a device, 'auto' or a {{module name: device}} dict, got {device_map!r}")
    return dispatch_model(model, device_map=device_map)


def load_model_folder(folder: Path, torch_dtype=None, device_map=None, low_cpu_mem_usage: bool = True,
                      backend: str | None = None):
    """The converted denoiser of a converted model folder, every tensor checked before it is used."""
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
    blocks = _block_keys(model)
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
    if torch_dtype is None:  # the saved dtype (the blocks were materialised in the default one)
        torch_dtype = next((t.dtype for t in base.values() if t.is_floating_point()), None)
    if torch_dtype is not None and any(t.is_floating_point() and t.dtype != torch_dtype
                                       for t in model.state_dict().values()):
        model = model.to(torch_dtype)
    return _place(model, device_map).eval()


def from_pretrained(path_or_repo_id, torch_dtype=None, device_map=None, low_cpu_mem_usage: bool = True,
                    backend: str | None = None, **kwargs):
    """The converted pipeline (pipeline folder) or model (model folder) that `save_pretrained` wrote, local or a
    Hub repo id (through huggingface_hub: `revision`, `cache_dir`, `token`, `local_files_only`, HF_HUB_OFFLINE).

    `torch_dtype` casts (None keeps the saved dtypes); `device_map` is a device, "auto" or a {module: device}
    dict (accelerate's dispatch) for a model, and goes to diffusers for a pipeline; `low_cpu_mem_usage` builds the
    model on the meta device and assigns the saved tensors. Other keyword arguments go to the pipeline's
    `DiffusionPipeline.from_pretrained` (a model folder takes none)."""
    hub, rest = split_hub_kwargs(kwargs)
    folder = local_path(path_or_repo_id, "converted model or pipeline folder", **hub)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder")
    sub = denoiser_subfolder(folder)
    if sub is None:
        if rest:
            raise TypeError(f"unexpected arguments {sorted(rest)} for a model folder")
        return load_model_folder(folder, torch_dtype, device_map, low_cpu_mem_usage, backend)
    if device_map is not None and not _is_device(device_map):
        raise TypeError(f"device_map for a pipeline must be one device (all components go there), got "
                        f"{device_map!r}; load the model folder {folder / sub} for a per-module map")
    from diffusers import DiffusionPipeline
    model = load_model_folder(folder / sub, torch_dtype, None, low_cpu_mem_usage, backend)
    pipe = DiffusionPipeline.from_pretrained(str(folder), **{sub: model}, torch_dtype=torch_dtype,
                                             low_cpu_mem_usage=low_cpu_mem_usage, **rest)
    return pipe if device_map is None else pipe.to(device_map)
