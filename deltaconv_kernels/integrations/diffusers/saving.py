"""Writing converted models: `save` (the ΔConvBlock weights and config of a converted model, the `WEIGHT_FILES`)
and `save_pretrained` (one folder, or Hub repo, holding everything, loaded back in one call by `from_pretrained`).

`save` writes `deltaconv.safetensors` (keys `<layer name>.<block parameter>`, e.g. `...attn1.stages.0.weight`) plus
`deltaconv.json` (kernel size, gate and gate scale per layer, scales, inter_ratio, base-model fingerprint).

`save_pretrained` layout: a pipeline folder is what diffusers' `pipe.save_pretrained` writes, except that the
denoiser's subfolder (`unet/`, `transformer/`) is a *converted model folder*; a model folder alone is the same as
that subfolder:

    config.json                  the base model's diffusers config (unchanged)
    deltaconv_base.safetensors   every tensor of the converted model except the ΔConvBlocks (a kept attn1 under
                                 `...attn1.attention.*`); its header records the format and whether attn1 was kept
    deltaconv.json / .safetensors  the ΔConvBlocks and the conversion (`save`)

    diffusion_pytorch_model.safetensors.index.json   a guard (below)

There is deliberately no diffusers weights file: the original attn1 weights do not exist any more, and a diffusers
loader that finds a weights file with them missing initialises them at random (silently with
`low_cpu_mem_usage=False`). Instead the guard index names a single shard that does not exist and whose name is the
advice, so diffusers' own `from_pretrained` fails loudly, saying what to call. `convert` makes the model's own
`save_pretrained` (which `pipe.save_pretrained` calls) write this layout too (`install_save`).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save as safetensors_bytes

import deltaconv_kernels.integrations.diffusers.sites as dm
from deltaconv_kernels.fileio import atomic_write
from deltaconv_kernels.integrations.diffusers.files import (
    ADVICE,
    BASE_NAME,
    CONFIG_NAME,
    FORMAT,
    GUARD_NAME,
    PRETRAINED_FORMAT,
    PRETRAINED_VERSION,
    VERSION,
    WEIGHTS_NAME,
)
from deltaconv_kernels.integrations.diffusers.hub import push_folder
from deltaconv_kernels.integrations.diffusers.layers import converted_layers, layer_config


def save(model_or_pipeline, path, push_to_hub: bool = False, repo_id: str | None = None, private: bool | None = None,
         token: str | None = None, commit_message: str | None = None) -> Path:
    """Write the ΔConvBlock weights and config of a converted model into directory `path` (created if needed); with
    `push_to_hub`, then upload that folder to the Hub repo `repo_id` (`hub.push_folder`)."""
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
        "layers": {name: layer_config(m) for name, m in layers.items()},
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
        push_folder(out, repo_id, private, token, commit_message)
    return out


def block_keys(model) -> set[str]:
    return {f"{name}.block.{key}" for name, m in converted_layers(model).items() for key in m.block.state_dict()}


def save_model_folder(model, directory) -> Path:
    """Write one converted denoiser as a converted model folder (module docstring)."""
    out = Path(directory)
    blocks = block_keys(model)
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
    header = {"format": "pt", "deltaconv_format": PRETRAINED_FORMAT, "deltaconv_version": str(PRETRAINED_VERSION),
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
