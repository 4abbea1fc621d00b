"""Launch helpers: argument checks, tile choice, padded-buffer geometry, reduction splits, the SM count, and the one
place every kernel launch goes through (`run`), so that `python/aot_report.py` can record what the package would
launch and compile it ahead of time without a GPU.

Under TRITON_INTERPRET=1 every program runs as numpy code on the CPU: nothing is autotuned (the first config of a
list runs) and reductions run in one split unless `reduction_splits` forces more (the tests do). On a GPU the
forward conv is autotuned over the spill-free tiles of `CONV_TILES`; kernels that accumulate into buffers use fixed
tiles (autotuning's repeated launches would accumulate twice).
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import triton

from deltaconv_kernels.runtime_env import triton_interpreting
from deltaconv_kernels.triton import interpreter_compat

interpreter_compat.install()

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# (BLOCK_H, BLOCK_W, num_warps) of the depthwise-conv kernels. Each thread computes strips of 8 adjacent outputs along
# W for a few channels (index_math.strip_conv: BLOCK_W a multiple of 8); 4 warps, so that a 32-channel block of
# 16 strips gives each thread 4 channels of one strip (8-warp tiles were held to 128 registers and spilled). The AOT
# report (python/aot_report.py) checks every one compiles without spills on sm_80/sm_90.
CONV_TILES = ((8, 16, 4), (16, 8, 4), (4, 16, 4))
# Padded buffers are sized for the largest tile, so any tile of the list can run on them without masks.
TILE_ALIGN = max(max(bh, bw) for bh, bw, _ in CONV_TILES)
# Taps of the weight-gradient kernel live in up to 4 register tensors [pieces[i], BLOCK_C] (`tap_pieces`); its channel
# block:
WGRAD_BLOCK_C = 32
# Tap-times-channel elements a thread of the weight-gradient kernel holds, by the conv input's element size: more
# amortise the loop, fewer leave registers for the loads (4-byte inputs with 64 spill on sm_80; AOT report).
WGRAD_PER_THREAD = {2: 64, 4: 32}
# Programs per SM that the reductions (weight gradient, spatial mean) aim for.
PROGRAMS_PER_SM = 4
# SM count assumed where no GPU is asked (the interpreter, the AOT recorder): an H100 SXM / H200.
DEFAULT_SM_COUNT = 132

_RECORDING: list | None = None
_FORCED_SPLITS: int | None = None


def interpreting() -> bool:
    return triton_interpreting()


def recording() -> bool:
    return _RECORDING is not None


@contextlib.contextmanager
def record_launches():
    """Collect `(kernel, grid, args, meta)` of every launch instead of running it (CPU tensors allowed)."""
    global _RECORDING
    previous, _RECORDING = _RECORDING, []
    try:
        yield _RECORDING
    finally:
        _RECORDING = previous


@contextlib.contextmanager
def reduction_splits(n: int):
    """Force the number of spatial splits of every reduction (tests: several and uneven under the interpreter)."""
    global _FORCED_SPLITS
    if n < 1:
        raise ValueError(f"reduction_splits: n must be >= 1, got {n}")
    previous, _FORCED_SPLITS = _FORCED_SPLITS, n
    try:
        yield
    finally:
        _FORCED_SPLITS = previous


def run(kernel, grid, *args, **meta) -> None:
    """Launch `kernel` (a JITFunction or an Autotuner) on `grid`, or record the launch (see `record_launches`)."""
    if _RECORDING is not None:
        _RECORDING.append((kernel, grid, args, meta))
        return
    if interpreting() and isinstance(kernel, triton.runtime.Autotuner):
        config = kernel.configs[0]
        kernel.fn[grid(config.kwargs) if callable(grid) else grid](*args, **meta, **config.kwargs)
        return
    kernel[grid](*args, **meta)


def conv_configs() -> list:
    return [triton.Config({"BLOCK_H": bh, "BLOCK_W": bw}, num_warps=nw, num_stages=1) for bh, bw, nw in CONV_TILES]


def fixed_conv_meta(tile: tuple[int, int, int]) -> dict:
    bh, bw, nw = tile
    return {"BLOCK_H": bh, "BLOCK_W": bw, "num_warps": nw, "num_stages": 1}


# The backward conv kernels run one fixed tile each (they accumulate or are followed by accumulating kernels),
# the pooled stage's gate backward (which also gathers the upsample gradient) included.
FIXED_CONV_META = fixed_conv_meta(CONV_TILES[0])


@functools.lru_cache(maxsize=16)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """SMs of `device`, read once per device; the H100 count where there is no GPU (interpreter, recorder)."""
    if device.type != "cuda":
        return DEFAULT_SM_COUNT
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


# Index math (windows, bilinear taps) runs in int32 inside the kernels; addresses are 64-bit.
MAX_SIDE = 32768


def check_map(t: torch.Tensor, name: str) -> None:
    """A [B, H, W, C] map the kernels can index: H and W up to MAX_SIDE (a 16K image has a 2048-wide latent)."""
    if t.dim() != 4:
        raise ValueError(f"{name} must be [B, H, W, C], got shape {tuple(t.shape)}")
    if max(t.shape[1], t.shape[2]) > MAX_SIDE:
        raise ValueError(f"{name}: the triton backend takes maps up to {MAX_SIDE} a side, "
                         f"got {t.shape[1]}x{t.shape[2]}")


def check_tensor(t: torch.Tensor, name: str, device: torch.device | None = None) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: the triton backend takes {SUPPORTED_DTYPES}, got {t.dtype} "
                        "(use backend='torch' for float64)")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} (same device as the other arguments)")
    if t.device.type == "cpu" and not (interpreting() or recording()):
        raise RuntimeError(f"{name} is a CPU tensor: the triton backend runs CPU tensors only under TRITON_INTERPRET=1")


def next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def channel_block(channels: int, largest: int = 32) -> int:
    """Channel block of the conv kernels: the largest of 32, 16, 8 dividing `channels` (no channel masks), else a
    masked power of two."""
    for bc in (32, 16, 8):
        if bc <= largest and channels % bc == 0:
            return bc
    return min(next_pow2(channels), largest)


def padded_size(n: int, k: int) -> int:
    """Rows (or columns) of a zero-padded copy of an n-long axis read by a K x K conv: K//2 before, and after the
    last tile row the largest tile can reach, K//2 + slack. The interior starts at index K//2."""
    return cdiv(n, TILE_ALIGN) * TILE_ALIGN + k - 1


def spatial_tile(h: int, w: int, channels: int) -> tuple[int, int, int]:
    """(BLOCK_H, BLOCK_W, BLOCK_C) of the elementwise-like kernels (pool, upsample, pool backward): ~64-128 pixels x
    32 channels on a GPU; under the interpreter up to 16 x 16 x 64 so a test-sized map is a handful of programs."""
    if interpreting():
        return min(next_pow2(h), 16), min(next_pow2(w), 16), min(next_pow2(channels), 64)
    bw = min(next_pow2(w), 16)
    bh = min(next_pow2(h), max(1, 128 // bw))
    return bh, bw, min(next_pow2(channels), 32)


def tap_pieces(taps: int) -> tuple[int, int, int, int]:
    """Power-of-two tap counts (a Triton tensor's sizes are powers of two) whose sum covers `taps`: the largest that
    fits, three times, then the remainder rounded up; 0 for an unused piece. K = 13: 128 + 32 + 8 + 1 = 169
    (no padded taps; one tensor of next_pow2(169) = 256 taps wasted 34%)."""
    pieces, rest = [], taps
    while rest and len(pieces) < 3:
        pieces.append(1 << (rest.bit_length() - 1))
        rest -= pieces[-1]
    if rest:
        pieces.append(next_pow2(rest))
    return tuple(pieces + [0] * (4 - len(pieces)))


def wgrad_warps(taps: int, block_c: int, element_size: int) -> int:
    """Warps of the weight-gradient kernel: about WGRAD_PER_THREAD elements a thread, a power of two up to 8."""
    warps = max(1, min(8, taps * block_c // (32 * WGRAD_PER_THREAD[element_size])))
    return 1 << (warps.bit_length() - 1)


def split_count(work_items: int, blocks: int, device: torch.device, min_per_split: int) -> int:
    """Splits of a reduction over `work_items` (rows, pixel blocks) with `blocks` other programs: about
    PROGRAMS_PER_SM programs per SM, each with at least `min_per_split` items; forced by `reduction_splits`."""
    if _FORCED_SPLITS is not None:
        return max(1, min(_FORCED_SPLITS, work_items))
    if interpreting():
        return 1
    target = cdiv(PROGRAMS_PER_SM * sm_count(device), max(blocks, 1))
    return max(1, min(target, work_items // max(min_per_split, 1)))


@functools.lru_cache(maxsize=256)
def max_window(in_size: int, out_size: int) -> int:
    """Largest adaptive-pool window along one axis (exact, from the integer window formula)."""
    return max(-((-(o + 1) * in_size) // out_size) - (o * in_size) // out_size for o in range(out_size))


def first_upsample_row(j: int, low: int, out: int) -> int:
    """Smallest output index whose lower bilinear (align_corners=False) source tap is >= j, for 1 <= j < low
    (`i0(y) >= j  <=>  (2y + 1) * low - out >= 2 * out * j`); 0 for j <= 0."""
    if j <= 0:
        return 0
    return cdiv(out * (2 * j + 1) - low, 2 * low)


def first_reaching_row(i: int, low: int, out: int) -> int:
    """Smallest output index that gives low-res index i a nonzero bilinear weight: its lower tap is i - 1 with
    a positive fraction (`(2y + 1) * low - out > 2 * out * (i - 1)`), or i itself. Mirrors the kernels' twin."""
    if i <= 0:
        return 0
    return (out * (2 * i - 1) - low) // (2 * low) + 1


@functools.lru_cache(maxsize=256)
def upsample_span(low: int, out: int) -> int:
    """Most output indices a low-res index must gather in the upsample backward: from its first reaching row up
    to the first row whose lower tap is past it (4 at 2x)."""
    return max((first_upsample_row(i + 1, low, out) if i + 1 < low else out) - first_reaching_row(i, low, out)
               for i in range(low))
