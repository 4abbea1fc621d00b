"""The windowed baselines through `torch.nn.attention.flex_attention`, compiled: whether it can run on a device
(`flex_status`, cheap: nothing is compiled until the first call), the block masks of the 2-D neighborhood window
and the 1-D band (built from `window_blocks`' geometry, the mask_mod applied inside partial blocks; cached per size,
window and device), and the one compiled call (`flex_attend`).

The masks are not built with `create_block_mask`: it evaluates the mask_mod on the dense N x N grid (N = 518400
tokens at 16K PixArt is 269 GB of booleans). `window_blocks` lists the blocks from the window's geometry instead:
the mask then holds (N/128)^2 int32 block indices (66 MB at 16K; building it there takes ~3 s and ~0.5 GB peak);
tests check the lists against `create_block_mask` at small sizes.
"""

from __future__ import annotations

from functools import cache, lru_cache

import torch

from deltaconv_kernels.baselines.window_blocks import FLEX_BLOCK, band_flex_blocks, neighborhood_flex_blocks

# Distinct compiled graphs per process (one per size, window, dtype and device). Past this dynamo would silently
# run flex_attention eagerly (dense N x N scores); `flex_attend` makes it raise instead.
RECOMPILE_LIMIT = 64


@cache
def _status(device_type: str) -> str | None:
    try:
        from torch.nn.attention import flex_attention as fa
    except ImportError:
        return f"torch {torch.__version__} has no torch.nn.attention.flex_attention"

    if not hasattr(fa.BlockMask, "from_kv_blocks"):
        return f"torch {torch.__version__}'s flex_attention has no BlockMask.from_kv_blocks"
    from torch import _dynamo

    if not _dynamo.is_dynamo_supported():
        return "torch.compile (dynamo) is not supported on this Python/platform"
    if device_type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
        except Exception as e:  # noqa: BLE001 - any failure here means inductor cannot build its CPU kernels
            return f"torch.compile cannot build CPU kernels: no C++ compiler ({e})"
        return None
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        if not torch.cuda.is_available():
            return "CUDA is not available"
        return None if has_triton() else "torch.compile needs Triton for CUDA kernels and it is not installed"
    return f"compiled flex_attention is only used on cpu and cuda here, not {device_type}"


def flex_status(device="cpu") -> str | None:
    """None when compiled flex_attention can run on `device`, else why not (checked without compiling)."""
    return _status(torch.device(device).type)


def preferred_order(impls: tuple[str, ...], device="cpu") -> tuple[str, ...]:
    """The order `impl=None` tries `impls` on `device`: as listed (natten, flex, reference), except on the CPU,
    where "reference" goes before "flex": inductor's CPU flex kernel is no faster per pair than SDPA, and the
    128-token blocks of the row-major sequence hold many more pairs than the window (flops.neighborhood_pairs:
    5.3x the ideal at 64x64 tokens, 19x at 135x240; the reference 3.8x and 4.0x). Measured here (attend step,
    B=2, 16 heads of 72, K=13, w=64; median of 5 interleaved rounds): PixArt-1024 fp32 neighborhood 0.77 s flex
    vs 0.46 s reference, bf16 1.12 vs 0.42 s; the window 0.31 vs 0.15 s (fp32), 0.34 vs 0.10 s (bf16); 4K
    (135x240) fp32 neighborhood 20.8 vs 5.6 s, window 1.87 vs 0.96 s. Forcing "flex" still runs it."""
    if torch.device(device).type != "cpu" or "flex" not in impls or "reference" not in impls:
        return impls
    rest = [i for i in impls if i != "flex"]
    return tuple(rest[:rest.index("reference")] + ["reference", "flex"] + rest[rest.index("reference") + 1:])


def _device_key(device) -> str:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def _to_tensors(rows, n_blocks: int, device):
    """Per-query-block lists of kv blocks -> (num_blocks [1, 1, Q], indices [1, 1, Q, n_blocks]) int32."""
    num = torch.tensor([len(r) for r in rows], dtype=torch.int32)
    idx = torch.zeros(len(rows), n_blocks, dtype=torch.int32)
    flat = torch.tensor([kb for r in rows for kb in r], dtype=torch.int32)
    if flat.numel():
        row = torch.repeat_interleave(torch.arange(len(rows)), num.long())
        pos = torch.arange(flat.numel()) - (torch.cumsum(num, 0) - num).long()[row]
        idx[row, pos] = flat
    return num[None, None].to(device), idx[None, None].to(device)


# inductor's CPU flex_attention kernel (torch 2.13, seen on an AVX2-only AMD EPYC) reads memory it never wrote
# when N % 16 == 8: repeated calls on the same inputs gave max relative errors of 0.3-0.8 at N = 8, 24, 40, 56,
# 72, 88, and none at 16 other sizes. On the CPU the sequence is therefore padded to a multiple of this; the padded
# keys are masked out and the padded queries dropped (`flex_attend`).
CPU_SEQ_MULTIPLE = 16


def padded_length(n: int, device_type: str) -> int:
    """The sequence length the compiled kernel runs at: n on CUDA, n rounded up to CPU_SEQ_MULTIPLE on the CPU."""
    return n if device_type != "cpu" else -(-n // CPU_SEQ_MULTIPLE) * CPU_SEQ_MULTIPLE


def _block_mask(blocks, n: int, mask_mod, device):
    from torch.nn.attention.flex_attention import BlockMask

    partial, full = blocks
    n_run = padded_length(n, torch.device(device).type)
    if n_run != n:  # keys past n are padding: masked, and the last kv block is never "full" (mask_mod applies)
        last = (n - 1) // FLEX_BLOCK
        partial = [sorted(set(p) | ({last} & set(f))) for p, f in zip(partial, full)]
        full = [[b for b in f if b != last] for f in full]
        real_mask_mod = mask_mod

        def mask_mod(b, h, q_idx, kv_idx):
            return real_mask_mod(b, h, q_idx, kv_idx) & (kv_idx < n)
    n_blocks = -(-n_run // FLEX_BLOCK)  # the same as for n: FLEX_BLOCK is a multiple of CPU_SEQ_MULTIPLE
    num, idx = _to_tensors(partial, n_blocks, device)
    full_num, full_idx = _to_tensors(full, n_blocks, device) if any(full) else (None, None)
    return BlockMask.from_kv_blocks(num, idx, full_num, full_idx, BLOCK_SIZE=FLEX_BLOCK, mask_mod=mask_mod,
                                    seq_lengths=(n_run, n_run))


def neighborhood_mask_mod(height: int, width: int, kernel_size: int):
    """mask_mod of the 2-D neighborhood window over the row-major sequence (window_blocks.window_start)."""
    kh, kw, half = min(kernel_size, height), min(kernel_size, width), kernel_size // 2
    top, left = max(height - kernel_size, 0), max(width - kernel_size, 0)

    def mask_mod(b, h, q_idx, kv_idx):
        r0 = (q_idx // width - half).clamp(0, top)
        c0 = (q_idx % width - half).clamp(0, left)
        kr, kc = kv_idx // width, kv_idx % width
        return (kr >= r0) & (kr < r0 + kh) & (kc >= c0) & (kc < c0 + kw)

    return mask_mod


def band_mask_mod(half_width: int):
    """mask_mod of the 1-D band |i - j| <= w."""
    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() <= half_width

    return mask_mod


@lru_cache(maxsize=8)
def _neighborhood_block_mask(height: int, width: int, kernel_size: int, device: str):
    return _block_mask(neighborhood_flex_blocks(height, width, kernel_size, FLEX_BLOCK), height * width,
                       neighborhood_mask_mod(height, width, kernel_size), device)


@lru_cache(maxsize=8)
def _band_block_mask(n: int, half_width: int, device: str):
    return _block_mask(band_flex_blocks(n, half_width, FLEX_BLOCK), n, band_mask_mod(half_width), device)


def neighborhood_block_mask(height: int, width: int, kernel_size: int, device="cpu"):
    """The cached BlockMask of the K x K neighborhood over an H x W map."""
    return _neighborhood_block_mask(height, width, kernel_size, _device_key(device))


def band_block_mask(n: int, half_width: int, device="cpu"):
    """The cached BlockMask of the band |i - j| <= w over n tokens."""
    return _band_block_mask(n, half_width, _device_key(device))


_COMPILED = None


def flex_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask, scale: float | None = None):
    """Compiled flex_attention on `[B, heads, N, d]`. Raises (saying why) where it cannot run (also: this torch's
    CPU flex_attention has no backward), and when dynamo would give up compiling a new shape rather than fall back
    to the eager (dense) flex_attention."""
    global _COMPILED
    reason = flex_status(q.device)
    if reason is not None:
        raise RuntimeError(f"flex_attention cannot run on {q.device}: {reason}")
    if q.device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise RuntimeError(f"torch {torch.__version__}'s flex_attention has no backward on the CPU: run the flex "
                           "path under torch.no_grad() / torch.inference_mode(), or use the 'reference' implementation")
    from torch import _dynamo

    if _COMPILED is None:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED = torch.compile(flex_attention, dynamic=False)
    n, n_run = q.shape[-2], block_mask.seq_lengths[0]
    if n_run != n:  # the CPU mask's padded length (padded_length): zero rows, masked as keys, dropped as queries
        q, k, v = (torch.nn.functional.pad(t, (0, 0, 0, n_run - n)) for t in (q, k, v))
    try:
        with _dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True):
            return _COMPILED(q, k, v, block_mask=block_mask, scale=scale)[..., :n, :]
    except _dynamo.exc.FailOnRecompileLimitHit as e:
        raise RuntimeError(f"flex_attention was compiled for {RECOMPILE_LIMIT} shapes in this process already "
                           "(raise baselines.flex.RECOMPILE_LIMIT); not running it eagerly, which would build the "
                           "dense N x N scores") from e
