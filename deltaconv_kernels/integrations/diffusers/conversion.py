"""`convert`: swap every self-attention `attn1` of a diffusers denoiser for a `DeltaConvAttention`, its report,
`revert`, and `set_attn_processor` for converted models (the walkers of converted models are in `layers`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

import deltaconv_kernels.integrations.diffusers.sites as dm
from deltaconv_kernels import validation

# A module, not its names: distill.initialise imports this package's submodules, and importing any of them first
# runs this package's __init__ (which imports this module) while initialise is still half-loaded.
from deltaconv_kernels.distill import initialise as attention_init
from deltaconv_kernels.integrations.diffusers.attention import DeltaConvAttention, attach_size_hook, detach_size_hooks
from deltaconv_kernels.integrations.diffusers.layers import converted_layers, iter_deltaconv_modules
from deltaconv_kernels.integrations.diffusers.saving import install_save, uninstall_save
from deltaconv_kernels.modules import DeltaConvBlock


@dataclass(frozen=True)
class LayerReport:
    name: str           # attn1 path relative to the denoiser; the key of a kernel_sizes dict
    level: str          # "down.1", "mid", "up.2", "blocks"
    factor: int         # token map = latent H/factor x W/factor
    sample_hw: tuple[int, int] | None  # token map at the model's config sample_size (None if it has none)
    channels: int
    kernel_size: int
    gate: str


@dataclass
class ConversionReport:
    model_class: str
    preset: str | None  # released setting used for defaults, None when every K was given
    scales: tuple[float, ...]
    inter_ratio: float
    layers: list[LayerReport] = field(default_factory=list)
    init: dict | None = None  # what init= set per layer (docs/DESIGN.md §10), None for "random"

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def kernel_sizes(self) -> dict[str, int]:
        """{layer_name: K}: a valid `kernel_sizes` argument for `convert` on the same architecture."""
        return {r.name: r.kernel_size for r in self.layers}

    def __str__(self) -> str:
        header = ("layer", "level", "H/W", "C", "K", "gate")
        rows = [(r.name, r.level, f"1/{r.factor}" + (f" ({r.sample_hw[0]}x{r.sample_hw[1]})" if r.sample_hw else ""),
                 str(r.channels), str(r.kernel_size), r.gate) for r in self.layers]
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
        lines = [f"{self.model_class}: {len(self.layers)} self-attention layers -> ΔConvBlock "
                 f"(preset={self.preset}, scales={self.scales}, inter_ratio={self.inter_ratio})"]
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        lines.append("  ".join("-" * w for w in widths))
        lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)
        return "\n".join(lines)


def _sample_hw(model: nn.Module, factor: int) -> tuple[int, int] | None:
    # U-Net strided convs round up (ceil); patch embedding rounds down.
    s = model.config.get("sample_size")
    if s is None:
        return None
    h, w = (s, s) if isinstance(s, int) else tuple(s)
    if isinstance(model, dm.UNet2DConditionModel):
        return -(-h // factor), -(-w // factor)
    return h // factor, w // factor


def _from_analysis(kernel_sizes):
    """The {layer: K} of an analysis.json that `deltaconv analyze` wrote (its path, or the loaded dict)."""
    if isinstance(kernel_sizes, (str, Path)) and str(kernel_sizes).endswith(".json"):
        path = Path(kernel_sizes)
        if not path.is_file():
            raise ValueError(f"kernel_sizes: no file {path}")
        kernel_sizes = json.loads(path.read_text())
    if isinstance(kernel_sizes, dict) and isinstance(kernel_sizes.get("kernel_sizes"), dict):
        return kernel_sizes["kernel_sizes"]
    return kernel_sizes


def _kernel_sizes(model, sites, kernel_sizes) -> tuple[dict[str, int], str | None]:
    names = [s.name for s in sites]
    kernel_sizes = _from_analysis(kernel_sizes)
    if isinstance(kernel_sizes, str):
        if kernel_sizes != "released":
            raise ValueError(f"kernel_sizes must be 'released', an int or a {{layer_name: K}} dict, "
                             f"got {kernel_sizes!r}")
        preset = dm.released_preset(model)
        sizes = {s.name: dm.released_kernel_size(model, s) for s in sites}
        missing = [n for n, k in sizes.items() if k is None]
        if missing:  # a level the released table says has no attention, yet this model has
            raise ValueError(f"released preset {preset!r} has no kernel size for {missing}")
        return sizes, preset
    if isinstance(kernel_sizes, dict):
        unknown = sorted(set(kernel_sizes) - set(names))
        missing = [n for n in names if n not in kernel_sizes]
        if unknown or missing:
            raise ValueError(f"kernel_sizes dict must name exactly the model's self-attention layers: unknown "
                             f"{unknown[:5]}{'...' if len(unknown) > 5 else ''}, missing {missing[:5]}"
                             f"{'...' if len(missing) > 5 else ''} (layer names look like {names[0]!r})")
        return {n: validation.check_kernel_size(kernel_sizes[n], f"kernel_sizes[{n!r}]") for n in names}, None
    k = validation.check_kernel_size(kernel_sizes, "kernel_sizes")
    return {n: k for n in names}, None


def convert(model_or_pipeline, kernel_sizes="released", gate: str | None = None, scales=(1.0, 0.5),
            inter_ratio: float = 0.5, keep_attention: bool = False, backend: str | None = None,
            gate_scale: float | None = None, init: str = "random", calibration=None) -> ConversionReport:
    """Replace every self-attention `attn1` of `BasicTransformerBlock`s (never `attn2`) with `DeltaConvAttention`.

    Args:
        model_or_pipeline: `UNet2DConditionModel`, `PixArtTransformer2DModel`, `DiTTransformer2DModel`, or a
            pipeline holding one as `unet` / `transformer`. Converted in place; new blocks take the dtype and
            device of the attention they replace (meta included).
        kernel_sizes: "released" (DESIGN §1 per-level sizes), one odd int for all layers, a dict naming
            exactly the layers `convert` reports (`report.kernel_sizes()`), or the analysis.json `deltaconv
            analyze` writes (its path or its loaded dict: the "kernel_sizes" entry is used).
        gate: "scaled" | "sigmoid"; None takes the released gate (U-Nets scaled, PixArt/DiT sigmoid).
        keep_attention: keep the original attention as `.attention` (needed for modes "teacher"/"distill").
        init: "random" (kaiming, as released), "attention" or "attention+fit" (start next to the attention, from
            `calibration`: model inputs or a `deltaconv analyze` folder; see `distill.initialise`).
    """
    attention_init.check_init(init, calibration)
    model = dm.resolve_denoiser(model_or_pipeline)
    if any(isinstance(m, DeltaConvAttention) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} is already converted (it has DeltaConvAttention layers)")
    sites = dm.find_sites(model)
    sizes, preset = _kernel_sizes(model, sites, kernel_sizes)
    gate = validation.check_gate(gate if gate is not None else dm.released_gate(model))
    scales = validation.check_scales(scales)
    report = ConversionReport(type(model).__name__, preset, scales, inter_ratio)
    blocks = {}
    for site in sites:  # build every block first, so a bad argument leaves the model untouched
        attn = site.block.attn1
        ref = attn.to_q.weight
        dim = attn.to_q.in_features
        blocks[site.name] = DeltaConvBlock(dim, sizes[site.name], scales, inter_ratio, gate, gate_scale, backend,
                                           device=ref.device, dtype=ref.dtype)
    for site in sites:
        attn = site.block.attn1
        size = attach_size_hook(site)
        site.block.attn1 = DeltaConvAttention(blocks[site.name], size, site.name,
                                              attention=attn if keep_attention or init != "random" else None)
        report.layers.append(LayerReport(site.name, site.level, site.factor, _sample_hw(model, site.factor),
                                         blocks[site.name].dim, sizes[site.name], gate))
    if init != "random":
        try:
            report.init = attention_init.initialise(model, init, calibration, keep_attention)
        except BaseException:
            revert(model)  # a failed init leaves the model as it was before convert
            raise
    install_save(model)  # the model's save_pretrained writes a converted folder, never a partial base model
    return report


def revert(model_or_pipeline) -> None:
    """Undo `convert`: put every kept original attention back as `attn1` and remove the size hooks. Raises (and
    changes nothing) when a layer did not keep it (convert(..., keep_attention=True) keeps it)."""
    model = dm.resolve_denoiser(model_or_pipeline)
    layers = converted_layers(model)
    without = [n for n, m in layers.items() if m.attention is None]
    if without:
        raise ValueError(f"cannot revert: {len(without)} of {len(layers)} converted layers did not keep the original "
                         f"attention (e.g. {without[0]}); only a model converted with keep_attention=True reverts")
    for name, module in layers.items():
        parent_name, attr = name.rsplit(".", 1)
        setattr(model.get_submodule(parent_name), attr, module.attention)
    detach_size_hooks(model)
    uninstall_save(model)


def set_attn_processor(model_or_pipeline, processors) -> None:
    """`model.set_attn_processor` that also takes a processor dict of the *base* model (keys
    `...attn1.processor`, `...attn2.processor`): on a converted model an attn1 entry goes to the kept original
    attention (`...attn1.attention.processor`) and is dropped where the ΔConvBlock replaced it (it has no
    processor). A single processor, or a dict keyed as `model.attn_processors` already is, goes through as is."""
    model = dm.resolve_denoiser(model_or_pipeline)
    if isinstance(processors, dict):
        layers = dict(iter_deltaconv_modules(model))
        mapped = {}
        for key, proc in processors.items():
            layer = key[: -len(".processor")] if key.endswith(".processor") else None
            if layer in layers:
                if layers[layer].attention is not None:
                    mapped[f"{layer}.attention.processor"] = proc
            else:
                mapped[key] = proc
        processors = mapped
    model.set_attn_processor(processors)
