"""Models and data of the digits proof: scikit-learn's 8x8 digits upsampled to 16x16, a tiny class-conditional
PixArt-style diffusion transformer (the teacher, `proofkit.build_pixart`) and a small CNN digit classifier (the
feature space of the Fréchet distance). Everything is built from configs with random weights: nothing is
downloaded."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from proofkit import ClassEmbedding, build_pixart
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
    return build_pixart(1, IMAGE_SIZE, hidden, layers, heads, CAPTION_CHANNELS)


def build_embedding() -> ClassEmbedding:
    return ClassEmbedding(NUM_CLASSES, PROMPT_TOKENS, CAPTION_CHANNELS)


def shift_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of -1..1 px (the same for the whole batch): they make the feature space robust to the
    samples' slight misalignments."""
    return torch.roll(x, shifts=tuple(torch.randint(-1, 2, (2,), generator=gen).tolist()), dims=(2, 3))


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
