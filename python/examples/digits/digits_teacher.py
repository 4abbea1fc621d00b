"""Train the digits teacher (a tiny class-conditional PixArt transformer, v-prediction with Min-SNR-5 weights)
and the digit classifier on CPU. Both finish in minutes on two cores; training stops at `max_seconds` even if
`steps` are not done."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from digits_models import ClassEmbedding, DigitClassifier, build_scheduler, build_teacher, predict_noise

from deltaconv_kernels.distill.losses import min_snr_weights, weighted_mse


def train_teacher(images: torch.Tensor, labels: torch.Tensor, steps: int = 1000, batch: int = 64,
                  lr: float = 1e-3, max_seconds: float = 480.0, seed: int = 0, hidden: int = 48, layers: int = 4,
                  heads: int = 3, log_every: int = 100):
    """Returns `(model, class_embedding, info)`; `info` has the steps done, seconds and the last losses.
    The learning rate follows a cosine over whichever budget (steps or seconds) runs out first."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_teacher(hidden=hidden, layers=layers, heads=heads)
    embed, scheduler = ClassEmbedding(), build_scheduler()
    params = list(model.parameters()) + list(embed.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    alphas = scheduler.alphas_cumprod
    start, losses, done = time.time(), [], 0
    model.train()
    for step in range(steps):
        idx = torch.randint(0, images.shape[0], (batch,), generator=gen)
        x0, y = images[idx], labels[idx]
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
            print(f"teacher step {done}/{steps} loss {sum(losses[-log_every:]) / log_every:.4f} "
                  f"({time.time() - start:.0f}s)", flush=True)
        if time.time() - start > max_seconds:
            print(f"teacher: time budget {max_seconds:.0f}s reached after {done} steps", flush=True)
            break
    model.eval()
    embed.eval()
    for p in params:
        p.requires_grad_(False)
    tail = losses[-50:]
    return model, embed, {"steps": done, "seconds": time.time() - start, "final_loss": sum(tail) / len(tail)}


def train_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 8, seed: int = 0):
    """A small CNN trained on 80% of the digits; returns `(classifier, held-out accuracy)`."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    perm = torch.randperm(images.shape[0], generator=gen)
    split = int(0.8 * images.shape[0])
    tr, te = perm[:split], perm[split:]
    clf = DigitClassifier()
    opt = torch.optim.Adam(clf.parameters(), lr=2e-3)
    for _ in range(epochs):
        order = tr[torch.randperm(tr.numel(), generator=gen)]
        for s in range(0, order.numel(), 64):
            idx = order[s:s + 64]
            # Small random shifts make the feature space robust to the samples' slight misalignments.
            x = torch.roll(images[idx], shifts=tuple(torch.randint(-1, 2, (2,), generator=gen).tolist()), dims=(2, 3))
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
