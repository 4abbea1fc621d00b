"""Run a diffusers denoiser over chosen timesteps with attention capture on, and turn the averages into a report:
per layer H, W, M(k), dM/dk, M_hp(k), ERF and the recommended kernel size.

Inputs: without images or a text encoder at hand, the default input is x_t = noise ~ N(0, 1) latents with random
conditioning (text embeddings ~ N(0, 1), random class labels for DiT), seeded. Pass `inputs` to analyse real
latents and real embeddings instead; its `latents` may be a {timestep: x_t} dict (real latents noised to each
timestep), so that every step sees the noise level the model was trained for at it."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import PixArtTransformer2DModel, UNet2DConditionModel
from torch import nn

from deltaconv_kernels.analysis import locality
from deltaconv_kernels.analysis.aggregate import LayerStats, LocalityAccumulator
from deltaconv_kernels.analysis.attention_stats import AttentionStatistics, hooked_inputs
from deltaconv_kernels.analysis.capture import DEFAULT_MAX_ELEMENTS, AttentionCapture
from deltaconv_kernels.analysis.recommend import KernelRule
from deltaconv_kernels.integrations.diffusers.sites import SUPPORTED

DEFAULT_PLOT_QUERIES = ((0.5, 0.5), (0.25, 0.25), (0.0, 0.0))  # fractions of (H, W): centre, quarter, corner


def plot_positions(fractions: Sequence[tuple[float, float]]):
    """h, w -> query positions at the given fractions of the map (centre = 0.5, 0.5)."""
    for fy, fx in fractions:
        if not (0 <= fy <= 1 and 0 <= fx <= 1):
            raise ValueError(f"plot query fractions must lie in [0, 1], got ({fy}, {fx})")
    return lambda h, w: [(min(int(fy * h), h - 1), min(int(fx * w), w - 1)) for fy, fx in fractions]


def default_inputs(model: nn.Module, batch_size: int, latent_hw: tuple[int, int], seed: int) -> dict:
    """Random x_t and conditioning matching the model's config (float32 on CPU; `forward_kwargs` casts them)."""
    if type(model).__name__ not in SUPPORTED:
        raise TypeError(f"model must be one of {list(SUPPORTED)}, got {type(model).__name__}")
    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    h, w = latent_hw
    inputs = {"latents": torch.randn(batch_size, cfg.in_channels, h, w, generator=gen)}
    if isinstance(model, UNet2DConditionModel):
        inputs["encoder_hidden_states"] = torch.randn(batch_size, 77, cfg.cross_attention_dim, generator=gen)
        if cfg.addition_embed_type == "text_time":  # SDXL: pooled text embeddings + 6 size/crop ids
            text_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            inputs["text_embeds"] = torch.randn(batch_size, text_dim, generator=gen)
            inputs["time_ids"] = torch.tensor([[8.0 * h, 8.0 * w, 0.0, 0.0, 8.0 * h, 8.0 * w]]).repeat(batch_size, 1)
        elif cfg.addition_embed_type is not None or cfg.class_embed_type is not None:
            raise ValueError(f"U-Net with addition_embed_type={cfg.addition_embed_type!r} / class_embed_type="
                             f"{cfg.class_embed_type!r} needs inputs the analysis does not synthesise")
    elif isinstance(model, PixArtTransformer2DModel):
        inputs["encoder_hidden_states"] = torch.randn(batch_size, 16, cfg.caption_channels, generator=gen)
    else:
        inputs["class_labels"] = torch.randint(0, cfg.num_embeds_ada_norm, (batch_size,), generator=gen)
    return inputs


def forward_kwargs(model: nn.Module, inputs: dict, timestep: int, device, dtype) -> dict:
    """Keyword arguments of one denoiser call at `timestep`."""
    def cast(t):
        return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)

    x = cast(inputs["latents"])
    b, _, h, w = x.shape
    t = torch.full((b,), timestep, dtype=torch.long, device=device)
    if isinstance(model, UNet2DConditionModel):
        kw = {"sample": x, "timestep": t, "encoder_hidden_states": cast(inputs["encoder_hidden_states"])}
        if "text_embeds" in inputs:
            kw["added_cond_kwargs"] = {"text_embeds": cast(inputs["text_embeds"]), "time_ids": cast(inputs["time_ids"])}
        return kw
    if isinstance(model, PixArtTransformer2DModel):
        added = {"resolution": None, "aspect_ratio": None}
        if model.use_additional_conditions:
            added = {"resolution": torch.tensor([[8.0 * h, 8.0 * w]] * b, device=device, dtype=dtype),
                     "aspect_ratio": torch.tensor([[h / w]] * b, device=device, dtype=dtype)}
        return {"hidden_states": x, "encoder_hidden_states": cast(inputs["encoder_hidden_states"]), "timestep": t,
                "added_cond_kwargs": added}
    return {"hidden_states": x, "timestep": t, "class_labels": inputs["class_labels"].to(device)}


@dataclass
class AnalysisSettings:
    timesteps: Sequence[int] = (999, 750, 500, 250, 1)
    num_queries: int = 64
    seed: int = 0
    threshold: float = 0.8
    hp_cutoff: float = 0.1
    hp_order: int = 2
    hp_power: int = 1
    max_kernel: int | None = None
    erf_source: str = "mass"  # which ERF the kernel rule uses: "mass" or "highpass"
    rule: KernelRule = field(default_factory=KernelRule)
    plot_queries: Sequence[tuple[float, float]] = DEFAULT_PLOT_QUERIES
    max_elements: int = DEFAULT_MAX_ELEMENTS

    def __post_init__(self):
        if not self.timesteps:
            raise ValueError("timesteps must name at least one timestep")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must lie in (0, 1], got {self.threshold}")
        if self.erf_source not in ("mass", "highpass"):
            raise ValueError(f"erf_source must be 'mass' or 'highpass', got {self.erf_source!r}")


@dataclass
class LayerReport:
    stats: LayerStats
    erf: int | None
    hp_erf: int | None
    kernel_size: int

    def to_dict(self) -> dict:
        s = self.stats
        return {"H": s.hw[0], "W": s.hw[1], "heads": s.heads, "kernel_sizes": s.kernel_sizes, "M": s.mass,
                "dM_dk": s.mass_grad, "M_hp": s.hp_mass, "dM_hp_dk": s.hp_mass_grad, "erf": self.erf,
                "erf_hp": self.hp_erf, "recommended_kernel_size": self.kernel_size, "M_by_timestep": s.mass_by_step,
                "maps_per_timestep": s.queries_per_step}


@dataclass
class AnalysisReport:
    layers: dict[str, LayerReport]
    settings: AnalysisSettings
    model: str
    latent_hw: tuple[int, int]
    batch_size: int

    @property
    def kernel_sizes(self) -> dict[str, int]:
        """{layer name: K}, ready for `convert(model, kernel_sizes=...)`."""
        return {name: r.kernel_size for name, r in self.layers.items()}

    def to_dict(self) -> dict:
        s = self.settings
        return {
            "model": self.model, "latent_hw": list(self.latent_hw), "batch_size": self.batch_size,
            "settings": {"timesteps": list(s.timesteps), "num_queries": s.num_queries, "seed": s.seed,
                         "threshold": s.threshold, "highpass": {"filter": "butterworth", "cutoff_cycles_per_px":
                                                                s.hp_cutoff, "order": s.hp_order, "power": s.hp_power},
                         "max_kernel": s.max_kernel, "erf_source": s.erf_source,
                         "rule": {"fraction": s.rule.fraction, "k_min": s.rule.k_min, "k_max": s.rule.k_max}},
            "definitions": {
                "M": "mean over samples, heads, sampled queries, then timesteps of the softmax mass in the k x k "
                     "window around the query (clipped at the border)",
                "dM_dk": "torch.gradient of M over the odd k grid (central differences, one-sided at the ends)",
                "M_hp": f"same window share of |A_hp|^{s.hp_power}, A_hp = Butterworth high-pass of each query's map",
                "erf": f"smallest k with M(k) >= {s.threshold}; erf_hp: the same on M_hp"},
            "kernel_sizes": self.kernel_sizes,
            "layers": {name: r.to_dict() for name, r in self.layers.items()},
        }

    def write_json(self, path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False))
        return path


def analyze(model: nn.Module, settings: AnalysisSettings | None = None, latent_hw: tuple[int, int] | None = None,
            batch_size: int = 1, inputs: dict | None = None, layers: Sequence[str] | None = None,
            progress: bool = False, statistics: AttentionStatistics | None = None) -> AnalysisReport:
    """Measure every self-attention layer of `model` (on its device and dtype) and recommend kernel sizes. With
    `statistics`, the same forwards also feed it (the attention-informed init's statistics, docs/DESIGN.md §10)."""
    settings = settings or AnalysisSettings()
    param = next(model.parameters())
    if latent_hw is None:
        size = model.config.sample_size
        latent_hw = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    if inputs is None:
        inputs = default_inputs(model, batch_size, latent_hw, settings.seed)
    per_step = latents_per_timestep(inputs["latents"], settings.timesteps)
    latent_hw = tuple(per_step[int(settings.timesteps[0])].shape[-2:])
    plot_queries = plot_positions(settings.plot_queries)
    accumulator = LocalityAccumulator(settings.hp_cutoff, settings.hp_order, settings.hp_power, settings.max_kernel,
                                      plot_queries)
    consumer = accumulator if statistics is None else (lambda maps: (accumulator(maps), statistics(maps)))
    capture = AttentionCapture(model, consumer, settings.num_queries, settings.seed, layers, plot_queries,
                               settings.max_elements)
    steps = settings.timesteps
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc="timesteps", unit="step")
    inputs_hooked = nullcontext() if statistics is None else hooked_inputs(capture, statistics)
    with capture, inputs_hooked, torch.no_grad():
        for t in steps:
            capture.step = int(t)
            step_inputs = {**inputs, "latents": per_step[int(t)]}
            model(**forward_kwargs(model, step_inputs, int(t), param.device, param.dtype))
    reports = {}
    results = accumulator.results()
    for name, stats in ((n, results[n]) for n in capture.layers if n in results):
        erf = locality.effective_receptive_field(stats.kernel_sizes, stats.mass, settings.threshold)
        hp_erf = (None if stats.hp_mass is None else
                  locality.effective_receptive_field(stats.kernel_sizes, stats.hp_mass, settings.threshold))
        chosen = erf if settings.erf_source == "mass" else hp_erf
        reports[name] = LayerReport(stats, erf, hp_erf, settings.rule(chosen))
    missing = [n for n in capture.layers if n not in reports]
    if missing:
        raise RuntimeError(f"layers {missing} never ran during the forward passes; nothing was measured for them")
    return AnalysisReport(reports, settings, type(model).__name__, latent_hw,
                          int(per_step[int(settings.timesteps[0])].shape[0]))


def latents_per_timestep(latents, timesteps: Sequence[int]) -> dict[int, torch.Tensor]:
    """{timestep: latents [B, C, H, W]}: one tensor used at every timestep, or a dict giving each analysed
    timestep its own x_t (e.g. real latents noised to that timestep), all of one shape."""
    if isinstance(latents, torch.Tensor):
        return {int(t): latents for t in timesteps}
    if not isinstance(latents, dict):
        raise ValueError(f"inputs['latents'] must be a [B, C, H, W] tensor or a {{timestep: tensor}} dict, got "
                         f"{type(latents).__name__}")
    per_step = {int(t): v for t, v in latents.items()}
    missing = [int(t) for t in timesteps if int(t) not in per_step]
    if missing:
        raise ValueError(f"inputs['latents'] has no latents for timesteps {missing} (it has {sorted(per_step)})")
    shapes = {tuple(per_step[int(t)].shape) for t in timesteps}
    if len(shapes) != 1 or len(next(iter(shapes))) != 4:
        raise ValueError(f"inputs['latents'] per timestep must all be one [B, C, H, W] shape, got {sorted(shapes)}")
    return {int(t): per_step[int(t)] for t in timesteps}


def latent_size_from_resolution(resolution: str, vae_scale_factor: int = 8) -> tuple[int, int]:
    """'512' or '512x768' (pixels, height x width) -> latent (H, W)."""
    parts = resolution.lower().split("x")
    try:
        hw = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"resolution must be like 512 or 512x768, got {resolution!r}") from None
    if len(hw) == 1:
        hw = hw * 2
    if len(hw) != 2 or min(hw) < vae_scale_factor:
        raise ValueError(f"resolution must be HxW pixels, each >= vae_scale_factor={vae_scale_factor}, "
                         f"got {resolution!r}")
    return tuple(math.ceil(v / vae_scale_factor) for v in hw)
