"""What the distillation proofs (digits/, locality/) share: a small class-conditional PixArt teacher (class labels
as "prompt" tokens through the cross-attention), its noise schedule and DDIM sampler, the teacher and classifier
training loops, the "attn1 = 0" ablation hook, PSNR and the sample grid. Everything runs on CPU from configs with
random weights: nothing is downloaded."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from deltaconv_kernels.distill.losses import min_snr_weights, weighted_mse

PREDICTION_TYPE = "v_prediction"  # a small model resolves low-noise steps far better with v than with ε


def build_pixart(in_channels: int, sample_size: int, hidden: int, layers: int, heads: int, caption_channels: int):
    """A small PixArt transformer with patch 2 (sample_size / 2 tokens per side), conditioned through
    cross-attention on `caption_channels`-wide prompt tokens."""
    from diffusers import PixArtTransformer2DModel

    return PixArtTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=hidden // heads, in_channels=in_channels,
        out_channels=in_channels, num_layers=layers, cross_attention_dim=hidden, sample_size=sample_size,
        patch_size=2, caption_channels=caption_channels, use_additional_conditions=False,
        norm_type="ada_norm_single", num_embeds_ada_norm=1000)


class ClassEmbedding(nn.Module):
    """The "text encoder" of a class-conditional proof model: a label -> `[tokens, channels]` prompt embedding."""

    def __init__(self, num_classes: int, tokens: int = 2, channels: int = 32):
        super().__init__()
        self.tokens, self.channels = tokens, channels
        self.table = nn.Embedding(num_classes, tokens * channels)
        nn.init.normal_(self.table.weight, std=1.0)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.table(labels).view(-1, self.tokens, self.channels)


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


def train_teacher(build_model: Callable[[], nn.Module], build_embed: Callable[[], nn.Module], images: torch.Tensor,
                  labels: torch.Tensor, steps: int = 1000, batch: int = 64, lr: float = 1e-3,
                  max_seconds: float = 480.0, seed: int = 0, log_every: int = 100,
                  augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None):
    """v-prediction with Min-SNR-5 weights on `images [N, C, H, W]` in [-1, 1] conditioned on `labels`; the
    learning rate follows a cosine over whichever budget (steps or seconds) runs out first. The models are built
    after seeding. Returns `(model, class_embedding, info)`; `info` has the steps done, seconds, the last losses
    and the loss curve (mean per `log_every` steps)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model, embed, scheduler = build_model(), build_embed(), build_scheduler()
    params = list(model.parameters()) + list(embed.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    alphas = scheduler.alphas_cumprod
    start, losses, done, curve = time.time(), [], 0, []
    model.train()
    for step in range(steps):
        idx = torch.randint(0, images.shape[0], (batch,), generator=gen)
        x0, y = images[idx], labels[idx]
        if augment is not None:
            x0 = augment(x0, gen)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = scheduler.get_velocity(x0, noise, t)
        weights = min_snr_weights(alphas, t, 5.0, scheduler.config.prediction_type)
        loss = weighted_mse(predict_noise(model, xt, t, embed(y)), target, weights)
        progress = max(step / steps, (time.time() - start) / max_seconds)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        done = step + 1
        if log_every and done % log_every == 0:
            curve.append((done, sum(losses[-log_every:]) / log_every))
            print(f"teacher step {done}/{steps} loss {curve[-1][1]:.4f} ({time.time() - start:.0f}s)", flush=True)
        if time.time() - start > max_seconds:
            print(f"teacher: time budget {max_seconds:.0f}s reached after {done} steps", flush=True)
            break
    model.eval()
    embed.eval()
    for p in params:
        p.requires_grad_(False)
    tail = losses[-50:]
    return model, embed, {"steps": done, "seconds": time.time() - start, "final_loss": sum(tail) / len(tail),
                          "curve": curve}


def train_classifier(build_classifier: Callable[[], nn.Module], images: torch.Tensor, labels: torch.Tensor,
                     epochs: int = 8, seed: int = 0,
                     augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                     lr: float = 2e-3, batch: int = 64):
    """Trains `build_classifier()` (built after seeding) on a random 80% of the images; returns
    `(classifier, accuracy on the held-out 20%)`."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    perm = torch.randperm(images.shape[0], generator=gen)
    split = int(0.8 * images.shape[0])
    tr, te = perm[:split], perm[split:]
    clf = build_classifier()
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    for _ in range(epochs):
        order = tr[torch.randperm(tr.numel(), generator=gen)]
        for s in range(0, order.numel(), batch):
            idx = order[s:s + batch]
            x = images[idx] if augment is None else augment(images[idx], gen)
            loss = F.cross_entropy(clf(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    clf.eval()
    with torch.no_grad():
        acc = (clf(images[te]).argmax(1) == labels[te]).float().mean().item()
    for p in clf.parameters():
        p.requires_grad_(False)
    return clf, acc


class ZeroOutput:
    """Forward hook making a layer's output zero: the teacher with self-attention removed."""

    def __call__(self, module, args, output):
        return torch.zeros_like(output)


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over samples of 10 log10(range² / MSE) for images in [-1, 1] (range 2)."""
    mse = (x - ref).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(4.0 / mse)).mean())


def save_grid(rows: dict[str, torch.Tensor], path: Path, per_row: int = 20, tile_inches: float = 0.55) -> None:
    """One labelled strip per variant: the same `per_row` noises/classes in each, 2-px gaps; grey (1 channel) or
    RGB (3 channels) images in [-1, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(per_row * tile_inches, len(rows) * (tile_inches + 0.3)))
    for ax, (name, imgs) in zip(axes, rows.items()):
        tiles = [F.pad(im, (1, 1, 1, 1), value=1.0) for im in imgs[:per_row]]
        strip = ((torch.cat(tiles, dim=2) + 1) / 2).clamp(0, 1)
        if strip.shape[0] == 1:
            ax.imshow(strip[0].numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(strip.permute(1, 2, 0).numpy())
        ax.set_title(name, fontsize=8, loc="left")
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def start_run(out: Path, threads: int) -> tuple[float, Callable[[str], None]]:
    """Set the torch CPU threads, create the work folder, and return the start time and a logger that prefixes
    each line with the seconds since then."""
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t_start:6.0f}s] {msg}", flush=True)

    return t_start, log
