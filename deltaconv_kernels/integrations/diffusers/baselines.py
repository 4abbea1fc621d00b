"""Drop the attention baselines (`deltaconv_kernels.baselines`) into a diffusers denoiser in place of every
self-attention `attn1`: the same sites and (H, W) hooks as `convert`, so a baseline and a ΔConvBlock model are
compared like for like. The original `to_q`/`to_k`/`to_v`/`to_out.0` weights are carried over (the baselines
name their projections like diffusers), so a training-free baseline (SDPA, neighborhood, DiTFastAttn) starts from
the pretrained attention; extra parameters (LinFusion's φ, the mediator's conv) keep their fresh init."""

from __future__ import annotations

import inspect

import torch
from torch import nn

import deltaconv_kernels.integrations.diffusers.sites as dm
from deltaconv_kernels.baselines import (
    DiTFastAttnAttention,
    LinFusionAttention,
    MediatorAttention,
    NeighborhoodAttention,
    SDPASelfAttention,
)
from deltaconv_kernels.integrations.diffusers.attention import DistillableAttention, SpatialSize, attach_size_hook

METHODS = {
    "sdpa": SDPASelfAttention,
    "neighborhood": NeighborhoodAttention,
    "ditfastattn": DiTFastAttnAttention,
    "linfusion": LinFusionAttention,
    "mediator": MediatorAttention,
}


class BaselineAttention(DistillableAttention):
    """A baseline layer (`.layer`, the student) in an `attn1` slot: same call signature, fed the (H, W) its size
    hook recorded. With `attention` kept (`replace_attention(..., keep_attention=True)`) it has the teacher /
    distill modes of `DistillableAttention`, so the distillation trainer trains the baseline like a ΔConvBlock."""

    student_attr = "layer"

    def __init__(self, layer: nn.Module, size: SpatialSize, name: str, attention: nn.Module | None = None):
        super().__init__(size, name, attention)
        self.layer = layer

    def _student(self, hidden_states, encoder_hidden_states, attention_mask, **cross_attention_kwargs):
        size = self._size.get(hidden_states.shape[1], self.layer_name)
        return self.layer(hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
                          size=size, **cross_attention_kwargs)


def _check_plain_attention(attn: nn.Module, name: str) -> None:
    # The baselines implement softmax(q k^T / sqrt(d)) v with linear projections and nothing else.
    extras = [a for a in ("norm_q", "norm_k", "norm_cross", "spatial_norm", "group_norm")
              if getattr(attn, a, None) is not None]
    if extras or getattr(attn, "residual_connection", False) or getattr(attn, "rescale_output_factor", 1.0) != 1.0:
        raise ValueError(f"{name}: its attention has {extras or 'a residual/rescaled output'}, which the baselines "
                         "do not model")


def replace_attention(model_or_pipeline, method: str, copy_weights: bool = True, keep_attention: bool = False,
                      **layer_kwargs) -> list[str]:
    """Replace every self-attention `attn1` with the baseline `method` (one of `METHODS`); returns the layer
    names. `layer_kwargs` go to the baseline's constructor (e.g. `kernel_size=13` for neighborhood).
    `keep_attention` keeps the original attention as the teacher of a distillation (`DistillTrainer`)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    model = dm.resolve_denoiser(model_or_pipeline)
    if any(isinstance(m, DistillableAttention) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} already has its self-attention replaced")
    sites = dm.find_sites(model)
    layer_kwargs = _layer_defaults(model, method, layer_kwargs)
    layers = {}
    for site in sites:  # build all first, so a bad argument leaves the model untouched
        attn = site.block.attn1
        _check_plain_attention(attn, site.name)
        ref = attn.to_q.weight
        layer = METHODS[method](attn.to_q.in_features, attn.heads, qkv_bias=attn.to_q.bias is not None,
                                out_bias=attn.to_out[0].bias is not None, device=ref.device, dtype=ref.dtype,
                                **layer_kwargs)
        if copy_weights:
            for proj in ("to_q", "to_k", "to_v"):
                getattr(layer, proj).load_state_dict(getattr(attn, proj).state_dict())
            layer.to_out[0].load_state_dict(attn.to_out[0].state_dict())
        layers[site.name] = layer
    for site in sites:
        site.block.attn1 = BaselineAttention(layers[site.name], attach_size_hook(site), site.name,
                                             attention=site.block.attn1 if keep_attention else None)
    if method == "ditfastattn":
        model.register_forward_pre_hook(GenerationClock(list(layers.values()), _scheduler_of(model_or_pipeline),
                                                        model), with_kwargs=True)
    return [s.name for s in sites]


def _layer_defaults(model, method: str, layer_kwargs: dict) -> dict:
    """Per-model defaults: the conditional half of a CFG batch is the first in DiT pipelines ([cond, uncond]),
    the second in Stable Diffusion and PixArt ([uncond, cond])."""
    if method == "ditfastattn" and "cond_half" not in layer_kwargs:
        layer_kwargs = {**layer_kwargs, "cond_half": "first" if type(model).__name__ == "DiTTransformer2DModel"
                        else "second"}
    return layer_kwargs


def _scheduler_of(model_or_pipeline):
    scheduler = getattr(model_or_pipeline, "scheduler", None)
    return scheduler if hasattr(scheduler, "timesteps") else None


class GenerationClock:
    """Forward pre-hook on the denoiser of a DiTFastAttn model: at the first call of every generation it resets
    the layers (step counter, caches) and sizes their plan to the scheduler's steps (a pipeline's
    `scheduler.timesteps`; unknown for a bare model). A generation starts when the timestep rises (timesteps fall
    within one) or when the known number of steps has run."""

    def __init__(self, layers: list, scheduler, model: nn.Module):
        self.layers, self.scheduler = layers, scheduler
        self.signature = inspect.signature(model.forward)
        self.last_t: float | None = None
        self.calls = 0

    def _timestep(self, args, kwargs) -> float:
        t = self.signature.bind_partial(*args, **kwargs).arguments.get("timestep")
        if t is None:
            raise ValueError("a DiTFastAttn model must be called with a timestep (it drives the step plan)")
        return float(t.flatten()[0]) if isinstance(t, torch.Tensor) else float(t)

    def _num_steps(self) -> int | None:
        timesteps = getattr(self.scheduler, "timesteps", None)
        return len(timesteps) if timesteps is not None else None

    def __call__(self, module, args, kwargs):
        t, n = self._timestep(args, kwargs), self._num_steps()
        if self.last_t is None or t > self.last_t or (n is not None and self.calls >= n):
            for layer in self.layers:
                layer.start_generation(n)
            self.calls = 0
        self.last_t = t
        self.calls += 1
        return None
