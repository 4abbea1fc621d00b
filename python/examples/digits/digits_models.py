"""Models and data of the digits proof: scikit-learn's 8x8 digits upsampled to 16x16, a tiny class-conditional
PixArt-style diffusion transformer (the teacher) and a small CNN digit classifier (the feature space of the
Fréchet distance). Everything is built from configs with random weights: nothing is downloaded."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SIZE = 16
NUM_CLASSES = 10
PROMPT_TOKENS = 2      # class embedding = 2 "prompt" tokens for the cross-attention
CAPTION_CHANNELS = 32


def load_digit_images(size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as `[N, 1, size, size]` in [-1, 1] (bilinear upsampling of the 0..16 grey levels) and
    their labels `[N]`."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images.clamp(0, 1) * 2 - 1, torch.tensor(bunch.target, dtype=torch.long)


def build_teacher(hidden: int = 96, layers: int = 4, heads: int = 4):
    """A small PixArt transformer: 16x16x1 latents, patch 2 (8x8 tokens), class tokens through cross-attention."""
    from diffusers import PixArtTransformer2DModel

    return PixArtTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=hidden // heads, in_channels=1, out_channels=1,
        num_layers=layers, cross_attention_dim=hidden, sample_size=IMAGE_SIZE, patch_size=2,
        caption_channels=CAPTION_CHANNELS, use_additional_conditions=False, norm_type="ada_norm_single",
        num_embeds_ada_norm=1000)


class ClassEmbedding(nn.Module):
    """The "text encoder" of the digits model: a label -> `[PROMPT_TOKENS, CAPTION_CHANNELS]` prompt embedding."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(NUM_CLASSES, PROMPT_TOKENS * CAPTION_CHANNELS)
        nn.init.normal_(self.table.weight, std=1.0)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.table(labels).view(-1, PROMPT_TOKENS, CAPTION_CHANNELS)


PREDICTION_TYPE = "v_prediction"  # a small model resolves low-noise steps far better with v than with ε


def build_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                         prediction_type=PREDICTION_TYPE)


def predict_noise(model, latents, timesteps, prompt_embeds):
    return model(latents, encoder_hidden_states=prompt_embeds, timestep=timesteps,
                 added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]


@torch.no_grad()
def sample(model, prompt_embeds: torch.Tensor, noise: torch.Tensor, steps: int = 20, batch: int = 128):
    """Deterministic DDIM sampling (eta = 0) from the given noise: same noise -> comparable samples. The model
    output is the scheduler's prediction type (v)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(build_scheduler().config)
    scheduler.set_timesteps(steps)
    out = []
    for start in range(0, noise.shape[0], batch):
        x = noise[start:start + batch].clone()
        cond = prompt_embeds[start:start + batch]
        for t in scheduler.timesteps:
            pred = predict_noise(model, x, t.expand(x.shape[0]), cond)
            x = scheduler.step(pred, t, x).prev_sample
        out.append(x.clamp(-1, 1))
    return torch.cat(out)


class DigitClassifier(nn.Module):
    """Small CNN on 16x16 digits; `features` (the 64-d penultimate layer) is the Fréchet-distance space."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 16, 64), nn.ReLU())
        self.head = nn.Linear(64, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
