"""Distillation losses (paper §4.3, docs/DESIGN.md §6): Min-SNR-γ weighted output MSE between student and teacher
predictions, per-layer feature MSE, and an optional MSE to the true diffusion target."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
FEATURE_TARGETS = ("attn1", "hidden_states")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the three terms. `gamma=None` turns Min-SNR weighting off (every sample weight 1).

    `feature_target`: "attn1" compares each ΔConvBlock output with the original attention's output on the same
    input; "hidden_states" compares the post-residual hidden states (output of each transformer block holding a
    replaced attn1) of the student pass with those of the teacher pass, as the released training did.
    """

    output: float = 1.0
    feature: float = 1.0
    noise: float = 0.0
    gamma: float | None = 5.0
    feature_target: str = "attn1"

    def __post_init__(self):
        for name in ("output", "feature", "noise"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or value != value:
                raise ValueError(f"LossWeights.{name} must be a number >= 0, got {value!r}")
        if self.gamma is not None and not (isinstance(self.gamma, (int, float)) and self.gamma > 0):
            raise ValueError(f"LossWeights.gamma must be > 0 or None (no Min-SNR weighting), got {self.gamma!r}")
        if self.feature_target not in FEATURE_TARGETS:
            raise ValueError(f"LossWeights.feature_target must be one of {FEATURE_TARGETS}, "
                             f"got {self.feature_target!r}")


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR(t) = ᾱ_t / (1 - ᾱ_t), in fp64 then cast to fp32 (ᾱ near 1 would lose digits in fp32)."""
    if timesteps.dim() != 1:
        raise ValueError(f"timesteps must be a 1-D tensor [B], got shape {tuple(timesteps.shape)}")
    if timesteps.min() < 0 or timesteps.max() >= alphas_cumprod.numel():
        raise ValueError(f"timesteps must lie in [0, {alphas_cumprod.numel()}) (the scheduler's alphas_cumprod), "
                         f"got range [{timesteps.min().item()}, {timesteps.max().item()}]")
    a = alphas_cumprod.to(device=timesteps.device, dtype=torch.float64)[timesteps.long()]
    return (a / (1.0 - a)).float()


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float | None = 5.0,
                    prediction_type: str = "epsilon") -> torch.Tensor:
    """Per-sample Min-SNR-γ weights (Hang et al. 2023) expressed for the model's prediction target:
    ε-prediction `min(SNR, γ) / SNR`, v-prediction `min(SNR, γ) / (SNR + 1)`, x0-prediction `min(SNR, γ)`."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    s = snr(alphas_cumprod, timesteps)
    if gamma is None:
        return torch.ones_like(s)
    clipped = torch.minimum(s, torch.full_like(s, float(gamma)))
    if prediction_type == "epsilon":
        return clipped / s
    if prediction_type == "v_prediction":
        return clipped / (s + 1.0)
    return clipped


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of `weights[i] * mean((prediction[i] - target[i])**2)`, computed in fp32."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
    per_sample = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    if weights is None:
        return per_sample.mean()
    if weights.shape != per_sample.shape:
        raise ValueError(f"weights must have shape [B]={tuple(per_sample.shape)}, got {tuple(weights.shape)}")
    return (per_sample * weights.to(per_sample)).mean()


def feature_mse(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Mean over layers of MSE(student feature, teacher feature); the teacher side carries no gradient."""
    if len(pairs) == 0:
        raise ValueError("feature_mse needs at least one (student, teacher) pair: were any layers converted?")
    losses = [F.mse_loss(s.float(), t.detach().float()) for s, t in pairs]
    return torch.stack(losses).mean()


def distillation_loss(student_pred: torch.Tensor, teacher_pred: torch.Tensor, weights: LossWeights,
                      sample_weights: torch.Tensor | None = None,
                      feature_pairs: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
                      true_target: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss `output * wMSE(student, teacher) + feature * feature_mse + noise * wMSE(student, target)`.

    Returns the differentiable total and a dict of the detached terms (unweighted) for logging. Terms with
    weight 0 are not computed (so `feature_pairs` / `true_target` may then be omitted).
    """
    total = student_pred.new_zeros((), dtype=torch.float32)
    parts: dict[str, float] = {}
    if weights.output > 0:
        out = weighted_mse(student_pred, teacher_pred.detach(), sample_weights)
        total = total + weights.output * out
        parts["output"] = out.item()
    if weights.feature > 0:
        feat = feature_mse(feature_pairs)
        total = total + weights.feature * feat
        parts["feature"] = feat.item()
    if weights.noise > 0:
        if true_target is None:
            raise ValueError("LossWeights.noise > 0 needs true_target (the noise, or v for v-prediction)")
        noise = weighted_mse(student_pred, true_target, sample_weights)
        total = total + weights.noise * noise
        parts["noise"] = noise.item()
    parts["total"] = total.item()
    return total, parts
