"""Launch helpers: argument checks, tile sizes and the forward autotune configs.

Under TRITON_INTERPRET=1 every program runs as numpy code on the CPU, so tiles are sized to cover a small
map in few programs and nothing is autotuned. On a GPU the forward conv kernels are autotuned over a few
tile shapes keyed by the map and channel sizes; the backward kernels use fixed tiles (they accumulate into
buffers, which autotuning's repeated launches would corrupt).
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Spatial x channel tiles (BLOCK_H, BLOCK_W, BLOCK_C, num_warps) tried by the forward autotuner on a GPU:
# 64-128 pixels by 32-64 channels keeps both fp32 accumulators (a and g) in registers.
FORWARD_TILES = ((8, 8, 32, 4), (4, 16, 32, 4), (8, 16, 32, 4), (8, 8, 64, 4), (4, 8, 64, 4), (16, 8, 32, 4),
                 (8, 16, 64, 8))


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def forward_configs() -> list:
    return [triton.Config({"BLOCK_H": bh, "BLOCK_W": bw, "BLOCK_C": bc}, num_warps=nw)
            for bh, bw, bc, nw in FORWARD_TILES]


def check_tensor(t: torch.Tensor, name: str, device: torch.device | None = None) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: the triton backend takes {SUPPORTED_DTYPES}, got {t.dtype} "
                        "(use backend='torch' for float64)")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} (same device as the other arguments)")
    if t.device.type == "cpu" and not interpreting():
        raise RuntimeError(f"{name} is a CPU tensor: the triton backend runs CPU tensors only under TRITON_INTERPRET=1")


def next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def spatial_tile(h: int, w: int, channels: int) -> tuple[int, int, int]:
    """(BLOCK_H, BLOCK_W, BLOCK_C) for the non-autotuned kernels: ~64-128 pixels x 32-64 channels on a GPU;
    under the interpreter up to 16 x 16 x 64 so a test-sized map is a handful of programs."""
    if interpreting():
        return min(next_pow2(h), 16), min(next_pow2(w), 16), min(next_pow2(channels), 64)
    bw = min(next_pow2(w), 16)
    bh = min(next_pow2(h), max(1, 128 // bw))
    return bh, bw, min(next_pow2(channels), 32)


@functools.lru_cache(maxsize=256)
def max_window(in_size: int, out_size: int) -> int:
    """Largest adaptive-pool window along one axis (exact, from the integer window formula)."""
    return max(-((-(o + 1) * in_size) // out_size) - (o * in_size) // out_size for o in range(out_size))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)
