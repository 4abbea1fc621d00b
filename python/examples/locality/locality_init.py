"""What the locality proof adds for the attention-informed initialisation (docs/DESIGN.md §10): the calibration
run (the analysis' real crops noised to each analysed timestep), the "best static mixing" bound (every head's
mean attention matrix applied to the teacher's own values), feature errors during distillation, and paired
per-sample PSNR differences."""

from __future__ import annotations

import math
import statistics

import torch
from proofkit import predict_noise
from torch import nn

from deltaconv_kernels.analysis.capture import attention_logits_inputs
from deltaconv_kernels.integrations.diffusers.attention import DistillableAttention, SpatialSize


def calibration_run(inputs: dict):
    """`run(model)`: the model on `inputs` = {"latents": {t: x_t}, "encoder_hidden_states": ...}, every t."""
    @torch.no_grad()
    def run(model):
        for t, x in inputs["latents"].items():
            predict_noise(model, x, torch.full((x.shape[0],), int(t)), inputs["encoder_hidden_states"])
    return run


@torch.no_grad()
def mean_attention(model: nn.Module, run) -> dict[str, torch.Tensor]:
    """{attn1 name: [heads, N, N]} the softmax matrices of every head averaged over the samples and calls of
    `run(model)` (all queries: affordable at the proof's 16x16 map, never used by the package at large maps)."""
    sums, counts, handles = {}, {}, []
    for name, module in model.named_modules():
        if name.endswith("attn1"):
            def hook(attn, args, kwargs, output, name=name):
                x = args[0] if args else kwargs["hidden_states"]
                q, k = attention_logits_inputs(attn, x, torch.arange(x.shape[1]))
                probs = torch.softmax(q.float() @ k.float().transpose(-1, -2) * attn.scale, -1).sum(0)
                sums[name] = sums.get(name, 0) + probs.double()
                counts[name] = counts.get(name, 0) + x.shape[0]
            handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        run(model)
    finally:
        for h in handles:
            h.remove()
    return {name: (sums[name] / counts[name]).float() for name in sums}


class StaticMixing(DistillableAttention):
    """attn1 replaced by a fixed mixing: `out = W_o concat_h(mean_A_h (W_v x + b_v)_h) + b_o` (the teacher's value
    and output projections, its per-head mean attention matrix). Kept attention as `.attention` for the modes."""

    student_attr = "mixing"

    def __init__(self, attention: nn.Module, maps: torch.Tensor, name: str):
        super().__init__(SpatialSize(name), name, attention)
        self.mixing = nn.Module()  # holds the maps only (no trained parameters)
        self.mixing.register_buffer("maps", maps)

    def _student(self, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        attn, maps = self.attention, self.mixing.maps
        b, n, _ = hidden_states.shape
        heads = maps.shape[0]
        v = attn.to_v(hidden_states).view(b, n, heads, -1).transpose(1, 2)   # [B, heads, N, d]
        mixed = (maps.to(v.dtype) @ v).transpose(1, 2).reshape(b, n, -1)
        return attn.to_out[0](mixed) / attn.rescale_output_factor


def install_static_mixing(model: nn.Module, maps: dict[str, torch.Tensor]) -> None:
    for name, m in maps.items():
        parent, attr = name.rsplit(".", 1)
        owner = model.get_submodule(parent)
        setattr(owner, attr, StaticMixing(getattr(owner, attr), m, name))


def per_sample_psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """10 log10(range² / MSE) per sample, images in [-1, 1] (range 2): the terms whose mean `proofkit.psnr` is."""
    mse = (x - ref).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(4.0 / mse)


def paired_difference(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Mean of `a - b` over paired samples, its standard error, and how many samples `a` wins."""
    d = (a - b).double().tolist()
    sd = statistics.stdev(d) if len(d) > 1 else math.nan
    return {"mean": statistics.fmean(d), "stderr": sd / math.sqrt(len(d)), "wins": sum(v > 0 for v in d),
            "n": len(d)}


class FeatureErrorLog:
    """`step_callback` for `DistillTrainer`: at the chosen steps the per-layer feature error (`measure(model)`) of
    the model being trained, as {step: mean over layers}; the trainer sets the layers' modes itself each step."""

    def __init__(self, model: nn.Module, measure, steps):
        self.model, self.measure, self.steps = model, measure, set(steps)
        self.errors: dict[int, float] = {}

    def record(self, step: int) -> None:
        per_layer = self.measure(self.model)
        self.errors[step] = statistics.fmean(per_layer.values())

    def __call__(self, step: int) -> None:
        if step in self.steps:
            was_training = self.model.training
            self.record(step)
            self.model.train(was_training)
