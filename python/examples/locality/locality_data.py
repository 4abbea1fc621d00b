"""Data and classifier of the locality proof: random crops (with flips) of the natural images that scikit-image
ships inside its package, and a small CNN that tells which image a crop comes from (its penultimate layer is the
Fréchet-distance space). Nothing is downloaded: only `skimage.data` images whose files are on disk are used."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

# The 2-D images of skimage.data whose files ship in the package (the others need a pooch download).
# `cat` is the same file as `chelsea`, `stereo_motorcycle` gives its left view; grey images are replicated to RGB.
SOURCES = ("astronaut", "brick", "camera", "cell", "checkerboard", "chelsea", "clock", "coffee", "coins",
           "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
           "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "stereo_motorcycle", "text")


def _rgb(image) -> np.ndarray:
    a = np.asarray(image[0] if isinstance(image, tuple) else image)
    if a.dtype == bool:
        a = a.astype(np.float64)
    a = a.astype(np.float64)
    if a.max() > 1.0:
        a = a / 255.0
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 4:  # RGBA (logo): composite on white
        a = a[..., :3] * a[..., 3:] + (1 - a[..., 3:])
    return np.clip(a, 0, 1)


def load_sources(short_side: int = 128, names=SOURCES) -> list[torch.Tensor]:
    """Each image as `[3, H, W]` in [-1, 1], resized (anti-aliased) so that its shorter side is `short_side` px."""
    import skimage.data
    from skimage.transform import resize

    out = []
    for name in names:
        a = _rgb(getattr(skimage.data, name)())
        h, w = a.shape[:2]
        scale = short_side / min(h, w)
        a = resize(a, (round(h * scale), round(w * scale)), anti_aliasing=True, order=1)
        out.append(torch.tensor(a, dtype=torch.float32).permute(2, 0, 1) * 2 - 1)
    return out


def random_crops(sources: list[torch.Tensor], n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` crops `[n, 3, size, size]` at uniform random positions of uniformly drawn sources, each flipped
    horizontally and vertically with probability 1/2, and their source indices `[n]`."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(sources), (n,), generator=gen)
    crops = torch.empty(n, 3, size, size)
    for i, label in enumerate(labels.tolist()):
        img = sources[label]
        y = int(torch.randint(0, img.shape[1] - size + 1, (1,), generator=gen))
        x = int(torch.randint(0, img.shape[2] - size + 1, (1,), generator=gen))
        crop = img[:, y:y + size, x:x + size]
        flips = torch.rand(2, generator=gen)
        if flips[0] < 0.5:
            crop = crop.flip(2)
        if flips[1] < 0.5:
            crop = crop.flip(1)
        crops[i] = crop
    return crops, labels


def flip_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal and vertical flips, per sample."""
    h, v = (torch.rand(x.shape[0], generator=gen) < 0.5 for _ in range(2))
    x = torch.where(h[:, None, None, None], x.flip(3), x)
    return torch.where(v[:, None, None, None], x.flip(2), x)


class SourceClassifier(nn.Module):
    """Small CNN on 32x32 RGB crops -> which source image; `features` (32-d, few enough dimensions for a
    Fréchet distance from ~150 samples) is the Fréchet-distance space."""

    FEATURES = 32

    def __init__(self, num_classes: int = len(SOURCES), size: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (size // 8) ** 2, self.FEATURES), nn.ReLU())
        self.head = nn.Linear(self.FEATURES, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
