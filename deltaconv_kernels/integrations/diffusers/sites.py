"""Which diffusers models are supported (`SUPPORTED`, the one list: conversion, checkpoints and the analysis check
against it, the distillation takes a subset of it), where their self-attention layers sit, the default kernel
sizes, and the dtype argument diffusers' loaders want.

A *site* is one `BasicTransformerBlock` whose `attn1` is self-attention. Its layer name is the module path of
that `attn1` relative to the denoiser (e.g. `down_blocks.0.attentions.0.transformer_blocks.0.attn1`); reports,
`kernel_sizes` dicts and checkpoints all use that name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

try:
    import diffusers
    from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel, UNet2DConditionModel
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    _IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # the integration is optional; say why it is missing when used
    _IMPORT_ERROR = exc

SUPPORTED = ("UNet2DConditionModel", "PixArtTransformer2DModel", "DiTTransformer2DModel")

# DESIGN §1: kernel sizes of the released models per block index (None = that level has no attention).
RELEASED_UNET = {
    "sd15": {"down": (7, 9, 5, None), "mid": 3, "up": (None, 5, 9, 11), "gate": "scaled"},
    "sdxl": {"down": (None, 9, 7), "mid": 9, "up": (9, 13, None), "gate": "scaled"},
}
# PixArt-Σ: all blocks K=13, sigmoid gate (released). PixArt-α has the same transformer (28 x 1152, same 64x64
# token map at 1024 px), so it gets Σ's setting. DiT (no released model): same adaLN transformer family, so the
# sigmoid gate; K=7 because DiT's 256/512 px token maps (16/32 wide) are 2-4x narrower than PixArt-Σ's 64, and
# 7 is the smallest released U-Net kernel at a comparable map width.
RELEASED_TRANSFORMER = {
    "PixArtTransformer2DModel": {"kernel_size": 13, "gate": "sigmoid"},
    "DiTTransformer2DModel": {"kernel_size": 7, "gate": "sigmoid"},
}

# Config entries that fix the module tree and the shapes of the replaced layers (the checkpoint fingerprint).
ARCHITECTURE_KEYS = {
    "UNet2DConditionModel": ("in_channels", "out_channels", "down_block_types", "mid_block_type", "up_block_types",
                             "block_out_channels", "layers_per_block", "transformer_layers_per_block",
                             "reverse_transformer_layers_per_block", "attention_head_dim", "num_attention_heads",
                             "cross_attention_dim", "only_cross_attention", "use_linear_projection"),
    "PixArtTransformer2DModel": ("in_channels", "out_channels", "num_layers", "num_attention_heads",
                                 "attention_head_dim", "patch_size", "cross_attention_dim", "caption_channels",
                                 "norm_type", "only_cross_attention", "double_self_attention"),
    "DiTTransformer2DModel": ("in_channels", "out_channels", "num_layers", "num_attention_heads",
                              "attention_head_dim", "patch_size", "norm_type", "num_embeds_ada_norm"),
}


def require_diffusers() -> None:
    if _IMPORT_ERROR is not None:
        raise ImportError(f"deltaconv_kernels.integrations.diffusers needs the `diffusers` package: {_IMPORT_ERROR}")


def dtype_kwarg(dtype) -> dict:
    """The dtype argument of a diffusers `from_pretrained` as the installed diffusers wants it: `dtype=` from 0.42
    on (which deprecates `torch_dtype`), `torch_dtype=` before. Empty for None (each keeps its default)."""
    if dtype is None:
        return {}
    require_diffusers()
    major, minor = (int(p) for p in diffusers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (0, 42) else {"torch_dtype": dtype}


@dataclass(frozen=True)
class Site:
    """One self-attention layer to replace."""
    name: str             # path of `attn1` relative to the denoiser
    block: nn.Module      # the BasicTransformerBlock
    owner: nn.Module      # module whose input is the 4-D map this layer sees
    patch: int            # the owner's input H, W are divided by this to get the token map
    level: str            # "down.0", "mid", "up.3" (U-Net) or "blocks" (transformers)
    factor: int           # token map = latent / factor (for the report)
    owner_name: str       # the owner's name, for error messages ("down_blocks.0.attentions.0", or the model class)


def resolve_denoiser(model_or_pipeline) -> nn.Module:
    """The denoiser of a pipeline (`unet` or `transformer`), or the model itself; a clear error otherwise."""
    require_diffusers()
    model = model_or_pipeline
    if not isinstance(model, nn.Module):
        for attr in ("unet", "transformer"):
            candidate = getattr(model_or_pipeline, attr, None)
            if isinstance(candidate, nn.Module):
                model = candidate
                break
        else:
            raise TypeError(f"expected a diffusers model ({', '.join(SUPPORTED)}) or a pipeline with a `unet` or "
                            f"`transformer`, got {type(model_or_pipeline).__name__}")
    if type(model).__name__ not in SUPPORTED or not isinstance(
            model, (UNet2DConditionModel, PixArtTransformer2DModel, DiTTransformer2DModel)):
        raise TypeError(f"unsupported model {type(model).__name__}: ΔConvBlock conversion supports "
                        f"{', '.join(SUPPORTED)}")
    return model


def _unet_level(name: str, model) -> tuple[str, int]:
    """Level label and resolution index of a U-Net transformer block from its module path."""
    part, rest = name.split(".", 1) if "." in name else (name, "")
    n_levels = len(model.config.block_out_channels)
    if part == "down_blocks":
        i = int(rest.split(".", 1)[0])
        return f"down.{i}", i
    if part == "mid_block":
        return "mid", n_levels - 1
    if part == "up_blocks":
        i = int(rest.split(".", 1)[0])
        return f"up.{i}", n_levels - 1 - i
    raise ValueError(f"unexpected U-Net module path {name!r}: expected down_blocks, mid_block or up_blocks")


def find_sites(model: nn.Module) -> list[Site]:
    """All self-attention sites of a supported denoiser, in forward order. Blocks whose attn1 is cross-attention
    (`only_cross_attention`) are not sites."""
    modules = dict(model.named_modules())
    sites = []
    is_unet = isinstance(model, UNet2DConditionModel)
    for name, block in modules.items():
        if not isinstance(block, BasicTransformerBlock) or block.only_cross_attention:
            continue
        if is_unet:
            owner_name = name.rsplit(".transformer_blocks.", 1)[0]
            owner = modules.get(owner_name)
            if not isinstance(owner, Transformer2DModel) or not owner.is_input_continuous:
                raise TypeError(f"{name}: only Transformer2DModel with continuous (4-D) input is supported in a "
                                f"U-Net, found {type(owner).__name__} at {owner_name!r}")
            level, index = _unet_level(name, model)
            sites.append(Site(f"{name}.attn1", block, owner, 1, level, 2 ** index, owner_name))
        else:
            patch = int(model.config.patch_size)
            sites.append(Site(f"{name}.attn1", block, model, patch, "blocks", patch, type(model).__name__))
    if is_unet:  # forward order: down levels, mid, up levels (named_modules lists mid_block last)
        order = {"down": 0, "mid": 1, "up": 2}
        sites.sort(key=lambda s: order[s.level.split(".")[0]])
    if not sites:
        raise ValueError(f"{type(model).__name__} has no self-attention (attn1) layers to replace")
    return sites


def _attention_flags(block_types) -> tuple[bool, ...]:
    return tuple("CrossAttn" in t for t in block_types)


def released_preset(model: nn.Module) -> str:
    """Name of the released setting that applies to `model` (U-Nets: matched by which levels have attention)."""
    kind = type(model).__name__
    if kind in RELEASED_TRANSFORMER:
        return {"PixArtTransformer2DModel": "pixart_sigma", "DiTTransformer2DModel": "dit"}[kind]
    down = _attention_flags(model.config.down_block_types)
    up = _attention_flags(model.config.up_block_types)
    for preset, table in RELEASED_UNET.items():
        if down == tuple(k is not None for k in table["down"]) and up == tuple(k is not None for k in table["up"]):
            return preset
    raise ValueError(f"no released kernel sizes for a U-Net with attention at down levels {down} and up levels "
                     f"{up} (released: SD1.5 and SDXL layouts); pass kernel_sizes=int or a {{layer_name: K}} dict")


def released_kernel_size(model: nn.Module, site: Site) -> int:
    kind = type(model).__name__
    if kind in RELEASED_TRANSFORMER:
        return RELEASED_TRANSFORMER[kind]["kernel_size"]
    table = RELEASED_UNET[released_preset(model)]
    if site.level == "mid":
        return table["mid"]
    part, index = site.level.split(".")
    return table[part][int(index)]


def released_gate(model: nn.Module) -> str:
    kind = type(model).__name__
    if kind in RELEASED_TRANSFORMER:
        return RELEASED_TRANSFORMER[kind]["gate"]
    return "scaled"  # both released U-Nets


def fingerprint(model: nn.Module) -> dict:
    """Class name plus a hash of the config entries that set the architecture: two models with the same
    fingerprint have the same self-attention layers with the same shapes."""
    kind = type(model).__name__
    entries = {k: model.config.get(k) for k in ARCHITECTURE_KEYS[kind]}
    text = json.dumps(entries, sort_keys=True, default=list)
    return {"class": kind, "config_sha256": hashlib.sha256(text.encode()).hexdigest()}


def find_denoiser(path, subfolder: str | None = None) -> tuple[str | None, str]:
    """(subfolder, class name) of the supported denoiser saved in `path`: `path/subfolder` when given, else `path`
    itself or, for a pipeline folder, its `unet/` or `transformer/` (class from `config.json` `_class_name`)."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"model path {root} does not exist (expected a diffusers model folder with a "
                                "config.json, or a pipeline folder)")
    candidates = [subfolder] if subfolder else [None, "unet", "transformer"]
    for sub in candidates:
        cfg_path = (root / sub if sub else root) / "config.json"
        if cfg_path.is_file():
            class_name = json.loads(cfg_path.read_text()).get("_class_name")
            if class_name not in SUPPORTED:
                raise ValueError(f"{cfg_path}: _class_name {class_name!r} is not a supported denoiser {SUPPORTED}")
            return sub, class_name
    raise FileNotFoundError(f"no denoiser config.json in {root} (looked in {[c or '.' for c in candidates]})")


def pipeline_vae_scale_factor(path) -> int | None:
    """Pixels per latent cell of the pipeline folder `path` (2^(levels - 1) of its `vae/`, as diffusers pipelines
    compute it), None when `path` has no VAE config."""
    cfg_path = Path(path) / "vae" / "config.json"
    if not cfg_path.is_file():
        return None
    levels = json.loads(cfg_path.read_text()).get("block_out_channels")
    if not isinstance(levels, list) or not levels:
        raise ValueError(f"{cfg_path}: block_out_channels must be a non-empty list, got {levels!r}")
    return 2 ** (len(levels) - 1)
