"""Locality measures of attention maps (paper §3.2): score mass M(k) in the k x k window around the query, its
gradient over k, the same mass after a Butterworth high-pass filter, and the effective receptive field.

Definitions (exact, so that results are comparable between runs):
- A query at (qy, qx) of an H x W map A has window W_k = rows [qy - r, qy + r], cols [qx - r, qx + r],
  r = (k - 1) / 2, clipped at the border. M(k) = sum_{W_k} A / sum_all A (the denominator is 1 for softmax rows;
  dividing keeps the measure exact for any non-negative map).
- dM/dk is `torch.gradient` of M over the odd k grid: central differences (M(k+2) - M(k-2)) / 4 inside,
  one-sided differences at the two ends.
- High-pass: A_hp = real(IDFT(H_bw * DFT(A))) with the Butterworth high-pass
  H_bw(f) = |f|^(2n) / (|f|^(2n) + f_c^(2n)), |f| the radial frequency in cycles per pixel (`fftfreq`), n the
  order and f_c the cutoff. H_bw(0) = 0 exactly, so a constant map is removed entirely.
  M_hp(k) = sum_{W_k} |A_hp|^p / sum_all |A_hp|^p (p = 1 by default: the share of the high-frequency magnitude
  inside the window; p = 2: the share of its energy). A query whose filtered map is numerically zero
  (sum |A_hp|^p <= 1e-12 * sum A^p) has no high-frequency content and is left out of the M_hp average.
- ERF = the smallest k of the grid with M(k) >= threshold (0.8 by default); None when no k reaches it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

ZERO_HIGHPASS_RTOL = 1e-12  # relative size below which a filtered map counts as empty (pure low-frequency)


def odd_kernel_sizes(h: int, w: int, max_kernel: int | None = None) -> list[int]:
    """1, 3, 5, ... up to the smallest odd k whose clipped window covers the whole map from any query
    (2 * max(H, W) - 1), or up to `max_kernel` when that is smaller."""
    if h < 1 or w < 1:
        raise ValueError(f"map size must be >= 1 x 1, got {h} x {w}")
    full = 2 * max(h, w) - 1
    if max_kernel is not None:
        if max_kernel < 1:
            raise ValueError(f"max_kernel must be a positive int, got {max_kernel}")
        full = min(full, max_kernel)
    return list(range(1, full + 1, 2))


def _check_kernel_sizes(kernel_sizes: Sequence[int]) -> torch.Tensor:
    ks = [int(k) for k in kernel_sizes]
    if not ks or any(k < 1 or k % 2 == 0 for k in ks) or sorted(set(ks)) != ks:
        raise ValueError("kernel_sizes must be a non-empty increasing list of positive odd ints, "
                         f"got {list(kernel_sizes)}")
    return torch.tensor(ks, dtype=torch.long)


def window_sums(maps: torch.Tensor, qy: torch.Tensor, qx: torch.Tensor, kernel_sizes: Sequence[int]) -> torch.Tensor:
    """Sum of each map inside the clipped k x k window around its query, for every k.

    maps: [..., S, H, W] (one map per query s); qy, qx: [S] query coordinates. Returns [..., S, len(kernel_sizes)]
    in float64 (an integral image makes every window sum four look-ups; float64 keeps it exact to ~1e-15)."""
    if maps.dim() < 3:
        raise ValueError(f"maps must be [..., S, H, W], got shape {tuple(maps.shape)}")
    s, h, w = maps.shape[-3:]
    if qy.shape != (s,) or qx.shape != (s,):
        raise ValueError(f"qy and qx must have shape ({s},) to match maps [..., S={s}, H, W], "
                         f"got {tuple(qy.shape)} and {tuple(qx.shape)}")
    if (qy < 0).any() or (qy >= h).any() or (qx < 0).any() or (qx >= w).any():
        raise ValueError(f"query coordinates must lie inside the {h} x {w} map")
    radius = (_check_kernel_sizes(kernel_sizes).to(maps.device) - 1) // 2  # [L]
    integral = torch.zeros(*maps.shape[:-2], h + 1, w + 1, dtype=torch.float64, device=maps.device)
    integral[..., 1:, 1:] = maps.to(torch.float64).cumsum(-2).cumsum(-1)
    qy, qx = qy.to(maps.device)[:, None], qx.to(maps.device)[:, None]  # [S, 1]
    y0, y1 = (qy - radius).clamp(min=0), (qy + radius + 1).clamp(max=h)  # [S, L]
    x0, x1 = (qx - radius).clamp(min=0), (qx + radius + 1).clamp(max=w)
    si = torch.arange(s, device=maps.device)[:, None]
    return (integral[..., si, y1, x1] - integral[..., si, y0, x1]
            - integral[..., si, y1, x0] + integral[..., si, y0, x0])


def score_mass(maps: torch.Tensor, qy: torch.Tensor, qx: torch.Tensor, kernel_sizes: Sequence[int]) -> torch.Tensor:
    """M(k) per map: window sum over total sum. [..., S, H, W] -> [..., S, L] float64."""
    total = maps.to(torch.float64).sum((-2, -1))[..., None]
    if (total <= 0).any():
        raise ValueError("every map must have a positive total (score mass is defined for non-negative maps)")
    return window_sums(maps, qy, qx, kernel_sizes) / total


def mass_gradient(kernel_sizes: Sequence[int], mass: torch.Tensor) -> torch.Tensor:
    """dM/dk over the k grid (last dim of `mass`): central differences inside, one-sided at the ends."""
    ks = _check_kernel_sizes(kernel_sizes).to(mass.dtype)
    if mass.shape[-1] != len(ks):
        raise ValueError(f"mass has {mass.shape[-1]} values in its last dim, expected one per k ({len(ks)})")
    if len(ks) == 1:
        return torch.zeros_like(mass)
    return torch.gradient(mass, spacing=(ks,), dim=-1)[0]


def butterworth_highpass(h: int, w: int, cutoff: float, order: int, device=None) -> torch.Tensor:
    """The Butterworth high-pass transfer function on the `rfft2` grid of an H x W map: [H, W // 2 + 1] float64."""
    if not cutoff > 0:
        raise ValueError(f"cutoff must be > 0 (cycles per pixel, the Nyquist frequency is 0.5), got {cutoff}")
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be a positive int, got {order!r}")
    fy = torch.fft.fftfreq(h, dtype=torch.float64, device=device)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64, device=device)[None, :]
    radial_pow = (fy.square() + fx.square()) ** order  # |f|^(2n)
    return radial_pow / (radial_pow + cutoff ** (2 * order))


def highpass(maps: torch.Tensor, cutoff: float, order: int) -> torch.Tensor:
    """Butterworth high-pass of each 2-D map (last two dims), computed in float64. Returns a real float64 tensor."""
    h, w = maps.shape[-2:]
    spectrum = torch.fft.rfft2(maps.to(torch.float64))
    return torch.fft.irfft2(spectrum * butterworth_highpass(h, w, cutoff, order, maps.device), s=(h, w))


def highpass_mass(maps: torch.Tensor, qy: torch.Tensor, qx: torch.Tensor, kernel_sizes: Sequence[int],
                  cutoff: float, order: int, power: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """M_hp(k) per map and a mask of the maps that have high-frequency content (the others give NaN rows)."""
    if power not in (1, 2):
        raise ValueError(f"power must be 1 (magnitude share) or 2 (energy share), got {power!r}")
    weight = highpass(maps, cutoff, order).abs() ** power
    total = weight.sum((-2, -1))
    reference = (maps.to(torch.float64).abs() ** power).sum((-2, -1))
    valid = total > ZERO_HIGHPASS_RTOL * reference
    mass = window_sums(weight, qy, qx, kernel_sizes) / torch.where(valid, total, 1.0)[..., None]
    return mass.masked_fill(~valid[..., None], float("nan")), valid


def effective_receptive_field(kernel_sizes: Sequence[int], mass: Sequence[float], threshold: float = 0.8) -> int | None:
    """The smallest k with M(k) >= threshold, or None when no k of the grid reaches it."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
    ks = [int(k) for k in kernel_sizes]
    values = [float(m) for m in mass]
    if len(ks) != len(values):
        raise ValueError(f"got {len(ks)} kernel sizes but {len(values)} mass values")
    for k, m in zip(ks, values):
        if m >= threshold - 1e-12:  # M(k_full) = 1 up to rounding must reach threshold = 1
            return k
    return None
