"""The replaced layers of a model: walking them (`iter_deltaconv_modules`, `converted_layers`, `replaced_layers`),
their modes and trainable parameters, and filling their ΔConvBlocks with loaded weights. Below saving, conversion and
loading, which all walk converted models."""

from __future__ import annotations

import torch

import deltaconv_kernels.integrations.diffusers.sites as dm
from deltaconv_kernels.integrations.diffusers.attention import MODES, DeltaConvAttention, DistillableAttention


def replaced_layers(model_or_pipeline) -> dict[str, DistillableAttention]:
    """{attn1 layer name: slot} of every replaced self-attention, a `convert`ed `DeltaConvAttention` or a
    `replace_attention` `BaselineAttention`, names relative to the denoiser; empty when none is replaced."""
    model = dm.resolve_denoiser(model_or_pipeline)
    return {name: m for name, m in model.named_modules() if isinstance(m, DistillableAttention)}


def iter_deltaconv_modules(model_or_pipeline):
    """(layer name, DeltaConvAttention) pairs of a converted model, names relative to the denoiser."""
    model = dm.resolve_denoiser(model_or_pipeline)
    for name, module in model.named_modules():
        if isinstance(module, DeltaConvAttention):
            yield name, module


def converted_layers(model_or_pipeline) -> dict[str, DeltaConvAttention]:
    """{layer name: DeltaConvAttention} of a converted model; a ValueError when it is not converted."""
    layers = dict(iter_deltaconv_modules(model_or_pipeline))
    if not layers:
        model = dm.resolve_denoiser(model_or_pipeline)
        raise ValueError(f"{type(model).__name__} is not converted: it has no DeltaConvAttention layers "
                         "(call convert first)")
    return layers


def set_mode(model_or_pipeline, mode: str) -> None:
    """Set `.mode` ("student" | "teacher" | "distill") on every replaced layer (ΔConvBlocks of `convert`, or
    baselines of `replace_attention`); checks all before changing any."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    layers = replaced_layers(model_or_pipeline)
    if not layers:
        model = dm.resolve_denoiser(model_or_pipeline)
        raise ValueError(f"{type(model).__name__} is not converted: it has no replaced self-attention layers "
                         "(call convert or replace_attention first)")
    if mode != "student":
        without = [n for n, m in layers.items() if m.attention is None]
        if without:
            raise ValueError(f"mode {mode!r} needs the original attention, but {len(without)} layers did not keep "
                             f"it (e.g. {without[0]}): convert with keep_attention=True")
    for module in layers.values():
        module.mode = mode


def deltaconv_parameters(model_or_pipeline):
    """The parameters of the ΔConvBlocks only (not the kept attention, not the rest of the model)."""
    return [p for _, m in iter_deltaconv_modules(model_or_pipeline) for p in m.block.parameters()]


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


def layer_config(module: DeltaConvAttention) -> dict:
    """The per-layer entry of a `save` config: what rebuilds this layer's ΔConvBlock."""
    b = module.block
    return {"dim": b.dim, "kernel_size": b.kernel_size, "gate": b.gate, "gate_scale": b.gate_scale}
