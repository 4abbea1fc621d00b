"""Pooled-bias branch: the mean over H, W in Triton, the small C x C product in torch.

Design choice: the mean is the only part that reads the whole map (bandwidth-bound), so it is the kernel;
the `[B, C] x [C, C]` product is a tiny GEMM that cuBLAS does better than a hand-written Triton matmul.
The mean is deterministic: each program sums a fixed pixel range in fp32 into its own partial row, and the
partials are summed by one torch reduction in a fixed order (no atomics).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from deltaconv_kernels.triton import launch


@triton.jit
def _sum_partial_kernel(x_ptr, s_b, s_h, s_w, s_c, part_ptr, width, n_pix, channels, pix_per_split,
                        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """partial[split, b, c] = sum of x[b, :, :, c] over pixels [split*pix_per_split, ...) (fp32)."""
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(2)
    cmask = c < channels
    start = split * pix_per_split
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    base = x_ptr + b * s_b + c.to(tl.int64)[None, :] * s_c
    for p0 in range(0, pix_per_split, BLOCK_P):
        q = start + p0 + tl.arange(0, BLOCK_P)
        ok = (q < n_pix) & (p0 + tl.arange(0, BLOCK_P) < pix_per_split)
        off = (q // width).to(tl.int64) * s_h + (q % width).to(tl.int64) * s_w
        acc += tl.load(base + off[:, None], mask=ok[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    total = tl.sum(acc, axis=0)
    n_b = tl.num_programs(0)
    tl.store(part_ptr + (split * n_b + b) * channels + c, total, mask=cmask)


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """fp32 mean over H, W of `[B, H, W, C]` (any strides) -> `[B, C]`."""
    b, h, w, c = x.shape
    n_pix = h * w
    block_p, block_c = (min(launch.next_pow2(n_pix), 64), min(launch.next_pow2(c), 64)) if launch.interpreting() \
        else (64, 64)
    n_cb = launch.cdiv(c, block_c)
    # Enough programs to fill the GPU, each summing at least 8 blocks of pixels (the kernel masks a split's tail).
    splits = launch.split_count(n_pix, b * n_cb, x.device, 8 * block_p)
    per = launch.cdiv(n_pix, splits)
    splits = launch.cdiv(n_pix, per)
    part = torch.empty((splits, b, c), dtype=torch.float32, device=x.device)
    launch.run(_sum_partial_kernel, (b, n_cb, splits), x, *x.stride(), part, w, n_pix, c, per, BLOCK_P=block_p,
               BLOCK_C=block_c)
    return part.sum(dim=0) / n_pix


def pooled_bias(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`weight @ mean_{H,W}(x) + bias` per sample: `[B, H, W, C]` -> `[B, C]` in x.dtype (fp32 math)."""
    launch.check_tensor(x, "x")
    launch.check_tensor(weight, "weight", x.device)
    launch.check_tensor(bias, "bias", x.device)
    return F.linear(spatial_mean(x), weight.float(), bias.float()).to(x.dtype)
