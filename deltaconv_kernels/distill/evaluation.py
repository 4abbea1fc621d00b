"""Evaluation helpers of the paper's §5 metrics, independent of any particular network: Fréchet distance between
feature sets (FDD with DINOv2 features, FID with Inception features), the DINOv2 score (the inception-score
formula on a classifier's logits) and the CLIP score. Encoders are any callable mapping a batch to a
`[B, D]` tensor; `load_encoder` reads one from a local file (nothing is downloaded)."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


def _as_features(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"{name} must be a [N, D] tensor, got {getattr(x, 'shape', type(x))}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples for a covariance, got {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} has non-finite values")
    return x.detach().to(torch.float64)


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean `[D]` and unbiased covariance `[D, D]` (fp64) of `[N, D]` features."""
    f = _as_features(features, "features")
    mu = f.mean(dim=0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2}). The trace of the cross term is computed as the sum of the square
    roots of the eigenvalues of the symmetric PSD matrix Σ1^{1/2} Σ2 Σ1^{1/2} (same spectrum as Σ1 Σ2), which
    avoids a non-symmetric matrix square root."""
    mu1, mu2 = torch.as_tensor(mu1, dtype=torch.float64), torch.as_tensor(mu2, dtype=torch.float64)
    s1, s2 = torch.as_tensor(sigma1, dtype=torch.float64), torch.as_tensor(sigma2, dtype=torch.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"inconsistent statistics: mu {tuple(mu1.shape)}/{tuple(mu2.shape)}, "
                         f"sigma {tuple(s1.shape)}/{tuple(s2.shape)}")
    root1 = _sqrt_psd(s1)
    cross = root1 @ s2 @ root1
    cross_trace = torch.linalg.eigvalsh((cross + cross.T) / 2).clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * cross_trace
    return float(value.clamp_min(0))


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two `[N, D]` feature sets (N may differ)."""
    a, b = _as_features(features_a, "features_a"), _as_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dims differ: {a.shape[1]} vs {b.shape[1]}")
    return frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))


def inception_score(logits: torch.Tensor, splits: int = 1) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) ‖ p(y))) from `[N, classes]` logits; mean and std over `splits` equal chunks.
    With DINOv2's linear-classifier logits this is the paper's DINOv2 score (DS)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be [N, classes >= 2], got {getattr(logits, 'shape', type(logits))}")
    if not 1 <= splits <= logits.shape[0]:
        raise ValueError(f"splits must be in [1, N={logits.shape[0]}], got {splits}")
    logp = torch.log_softmax(logits.detach().to(torch.float64), dim=1)
    scores = []
    for chunk in torch.tensor_split(logp, splits):
        marginal = torch.logsumexp(chunk, dim=0) - torch.log(torch.tensor(float(chunk.shape[0]), dtype=torch.float64))
        kl = (chunk.exp() * (chunk - marginal)).sum(dim=1).mean()
        scores.append(kl.exp())
    s = torch.stack(scores)
    return float(s.mean()), float(s.std(unbiased=False))


dinov2_score = inception_score


def clip_score(image_features: torch.Tensor, text_features: torch.Tensor, scale: float = 100.0) -> float:
    """Mean over pairs of `scale * max(cos(image_i, text_i), 0)` (the usual CLIP-score convention)."""
    if image_features.shape != text_features.shape or image_features.dim() != 2:
        raise ValueError(f"image and text features must both be [N, D] of one shape, got "
                         f"{tuple(image_features.shape)} and {tuple(text_features.shape)}")
    cos = torch.nn.functional.cosine_similarity(image_features.double(), text_features.double(), dim=1)
    return float((scale * cos.clamp_min(0)).mean())


@torch.no_grad()
def extract(encoder: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, batch_size: int = 64,
            device: str | torch.device | None = None) -> torch.Tensor:
    """Run `encoder` over `inputs` in batches (no grad) and concatenate its `[B, D]` outputs on the CPU."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    outs = []
    for start in range(0, inputs.shape[0], batch_size):
        chunk = inputs[start:start + batch_size]
        out = encoder(chunk.to(device) if device is not None else chunk)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != chunk.shape[0]:
            raise ValueError(f"encoder must return a [B, D] tensor per batch; got "
                             f"{getattr(out, 'shape', type(out))} for a batch of {chunk.shape[0]}")
        outs.append(out.float().cpu())
    return torch.cat(outs)


def load_encoder(path: str | Path, module: nn.Module | None = None,
                 trust_pickle: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """An encoder from a local file:
    - `.safetensors`: a state dict loaded into `module` (which must be given: the architecture);
    - `.pt2`: a `torch.export` program (`torch.export.save`);
    - otherwise a TorchScript archive (`torch.jit.save`) or a state dict (into `module`, read with
      `weights_only=True`). A whole pickled module (`torch.save(model)`) only with `trust_pickle=True`:
      unpickling runs code from the file, so only for files you made yourself.
    Returned in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder file {path} does not exist")
    if path.suffix == ".safetensors":
        if module is None:
            raise ValueError(f"{path} holds only weights: pass module= (the encoder's architecture) to load them")
        from safetensors.torch import load_file

        module.load_state_dict(load_file(str(path)))
        return module.eval()
    if path.suffix == ".pt2":
        return torch.export.load(str(path)).module()
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except RuntimeError:
        pass  # not TorchScript: a torch.save file
    if trust_pickle:
        obj = torch.load(path, map_location="cpu", weights_only=False)  # trusted by the caller: runs its code
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(
                f"{path} is not a safe encoder file: it needs full unpickling, which runs code from the file. "
                "Save the encoder as TorchScript (torch.jit.save), a torch.export program (.pt2) or its weights "
                "(.safetensors or a state dict, with module=); or pass trust_pickle=True for a file you made "
                "yourself") from e
    if isinstance(obj, dict):
        if module is None:
            raise ValueError(f"{path} holds a state dict: pass module= (the encoder's architecture) to load it")
        module.load_state_dict(obj)
        return module.eval()
    if isinstance(obj, nn.Module):
        return obj.eval()
    if callable(obj):
        return obj
    raise ValueError(f"{path} holds a {type(obj).__name__}, not an encoder module, TorchScript or state dict")
