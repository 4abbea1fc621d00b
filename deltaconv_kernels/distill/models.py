"""Calling diffusers denoisers uniformly during distillation, loading them and their noise scheduler from local
folders, the student layers of a model (ΔConvBlocks or trained baselines in its attn1 slots) and the state dict
of their trained modules that training checkpoints hold."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from deltaconv_kernels.integrations.diffusers.attention import DistillableAttention
from deltaconv_kernels.integrations.diffusers.layers import replaced_layers
from deltaconv_kernels.integrations.diffusers.sites import SUPPORTED, find_denoiser

# The supported denoisers `predict` can condition from a latent dataset (text embeddings); DiT needs class labels.
DISTILLABLE = tuple(name for name in SUPPORTED if name != "DiTTransformer2DModel")
VAE_FACTOR = 8  # PixArt's resolution condition is in pixels: latent size x 8 for its VAE


def predict(model: nn.Module, latents: torch.Tensor, timesteps: torch.Tensor, batch: dict) -> torch.Tensor:
    """The denoiser's prediction for `latents` at `timesteps` conditioned on `batch["prompt_embeds"]`; same
    shape as `latents` (a learned-variance output keeps only its first half, the prediction)."""
    base = unwrap_model(model)
    name = type(base).__name__
    cond = batch["prompt_embeds"].to(latents.dtype) if not torch.is_autocast_enabled(latents.device.type) \
        else batch["prompt_embeds"]
    if name == "UNet2DConditionModel":
        added = {k: batch[k] for k in ("text_embeds", "time_ids") if k in batch}
        out = model(latents, timesteps, encoder_hidden_states=cond, added_cond_kwargs=added or None,
                    return_dict=False)[0]
    elif name == "PixArtTransformer2DModel":
        added = {"resolution": None, "aspect_ratio": None}
        if base.use_additional_conditions:
            b, _, h, w = latents.shape
            added = {"resolution": torch.tensor([[h * VAE_FACTOR, w * VAE_FACTOR]] * b, device=latents.device,
                                                dtype=latents.dtype),
                     "aspect_ratio": torch.tensor([[h / w]] * b, device=latents.device, dtype=latents.dtype)}
        out = model(latents, encoder_hidden_states=cond, timestep=timesteps, added_cond_kwargs=added,
                    return_dict=False)[0]
    else:
        raise TypeError(f"distillation supports {DISTILLABLE} denoisers, got {name}")
    channels = latents.shape[1]
    if out.shape[1] == 2 * channels:  # learned sigma: [prediction, variance]
        out = out[:, :channels]
    return out


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model itself, out of any DistributedDataParallel wrapper (accelerate.prepare keeps it in `.module`)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def load_denoiser(path: str | Path, subfolder: str | None = None) -> nn.Module:
    """A diffusers denoiser saved with `save_pretrained` in `path` (or `path/subfolder`): the class comes from
    its `config.json` `_class_name`. Tries `unet/` and `transformer/` when `path` is a pipeline folder."""
    import diffusers  # deferred: the optional diffusers (this module imports without it)

    sub, class_name = find_denoiser(path, subfolder)
    return getattr(diffusers, class_name).from_pretrained(str(path), subfolder=sub)


def load_noise_scheduler(path: str | Path | None):
    """The training noise schedule: `DDPMScheduler` with the config of `path` (a scheduler folder or a pipeline's
    `scheduler/`), or diffusers' defaults (linear betas 1e-4..0.02, 1000 steps, ε-prediction) when None."""
    from diffusers import DDPMScheduler  # deferred: the optional diffusers

    if path is None:
        return DDPMScheduler()
    root = Path(path)
    for sub in (None, "scheduler"):
        cfg = (root / sub if sub else root) / "scheduler_config.json"
        if cfg.is_file():
            return DDPMScheduler.from_pretrained(str(root), subfolder=sub)
    raise FileNotFoundError(f"no scheduler_config.json in {root} or {root / 'scheduler'}")


def student_layers(model: nn.Module) -> dict[str, DistillableAttention]:
    """{attn1 layer name: slot} of every replaced self-attention (`convert`'s `DeltaConvAttention` or
    `replace_attention`'s `BaselineAttention`), names relative to the denoiser."""
    return replaced_layers(unwrap_model(model))


def student_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the distillation trains: the students' (ΔConvBlocks, or a baseline's whole layer with its
    carried-over projections), never the kept attention or the rest of the model."""
    return [p for m in student_layers(model).values() for p in m.student.parameters()]


def student_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The students' parameters only, keyed `<layer name>.<block|layer>.<param>` relative to the denoiser
    (`.block.` for ΔConvBlocks, `.layer.` for baselines)."""
    return {f"{name}.{module.student_attr}.{k}": v for name, module in student_layers(model).items()
            for k, v in module.student.state_dict().items()}


def load_student_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy saved student weights into a converted model; every student must be covered, nothing left over."""
    own = student_state_dict(model)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"student weights do not match the converted model: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]} (convert / replace_attention with the same settings first)")
    with torch.no_grad():
        for k, v in own.items():
            if v.shape != state[k].shape:
                raise ValueError(f"{k}: saved shape {tuple(state[k].shape)} != model's {tuple(v.shape)}")
            v.copy_(state[k])
