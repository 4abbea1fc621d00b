"""The C++ CPU path (issue 4): the whole `DeltaConvBlock` with backend="cpu" against the same block through the
`torch` reference, forward and forward+backward, fp32 and bf16, at the PixArt-1024 layer shape (64x64, C=1152,
K=13, sigmoid gate) and the SD1.5 level-1 shape (64x64, C=320, K=7, scaled gate); and the block against a full
SDPA self-attention layer at the PixArt shape.

pytest-benchmark times the `cpu` call. On a shared machine absolute times drift, so every test also times its
comparison (the `torch` block, or the SDPA layer) in the same test, alternating calls, and stores both minima
(the least disturbed runs) and their ratio in extra_info (`--benchmark-json`) and prints it. Targets (issue 4):
ratio <= 0.6 forward and <= 0.7 forward+backward; SDPA / block >= 8. They are reported, not asserted: these are
benchmarks, not tests.
"""

from __future__ import annotations

import time

import pytest
import torch

from deltaconv_kernels import DeltaConvBlock, available_backends
from deltaconv_kernels.baselines.sdpa import SDPASelfAttention

CPU = available_backends()["cpu"]
pytestmark = pytest.mark.skipif(not CPU.available, reason=f"cpu backend unavailable: {CPU.reason}")

# name: (H, W, C, K, gate)
SHAPES = {"pixart1024": (64, 64, 1152, 13, "sigmoid"), "sd15-level1": (64, 64, 320, 7, "scaled")}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TARGETS = {"fwd": 0.6, "fwd+bwd": 0.7}
ROUNDS = 4


def _block_call(shape: str, dtype: torch.dtype, backend: str, mode: str):
    h, w, c, k, gate = SHAPES[shape]
    torch.manual_seed(0)
    block = DeltaConvBlock(c, kernel_size=k, scales=(1.0, 0.5), gate=gate, backend=backend).to(dtype)
    x = torch.randn(1, h, w, c, dtype=dtype)
    if mode == "fwd":
        def call():
            with torch.no_grad():
                return block(x)
        return call
    x.requires_grad_()
    grad = torch.randn(1, h, w, c, dtype=dtype)

    def call_fb():
        block.zero_grad(set_to_none=True)
        x.grad = None
        block(x).backward(grad)
    return call_fb


def _alternate(calls: dict, rounds: int) -> dict:
    """Minimum seconds per call of each callable, timed in alternation so load drift hits all of them alike."""
    for f in calls.values():
        f()  # warm-up
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, f in calls.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {name: min(ts) for name, ts in times.items()}


@pytest.mark.parametrize("mode", list(TARGETS))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_block_cpu_vs_torch(benchmark, shape, dtype, mode):
    benchmark.group = f"issue 4: DeltaConvBlock cpu vs torch, {shape} {dtype} {mode}"
    cpu_call = _block_call(shape, DTYPES[dtype], "cpu", mode)
    torch_call = _block_call(shape, DTYPES[dtype], "torch", mode)
    med = _alternate({"cpu": cpu_call, "torch": torch_call}, ROUNDS)
    benchmark.pedantic(cpu_call, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    ratio = med["cpu"] / med["torch"]
    benchmark.extra_info.update({"cpu_ms": med["cpu"] * 1e3, "torch_ms": med["torch"] * 1e3, "ratio": ratio,
                                 "target_ratio": TARGETS[mode], "threads": torch.get_num_threads()})
    print(f"\n{shape} {dtype} {mode}: cpu {med['cpu'] * 1e3:.1f} ms, torch {med['torch'] * 1e3:.1f} ms, "
          f"ratio {ratio:.2f} (target <= {TARGETS[mode]})")


def test_block_vs_sdpa_pixart1024(benchmark):
    benchmark.group = "issue 4: DeltaConvBlock (cpu) vs SDPA self-attention, pixart1024 fp32 fwd"
    h, w, c, _, _ = SHAPES["pixart1024"]
    block_call = _block_call("pixart1024", torch.float32, "cpu", "fwd")
    torch.manual_seed(0)
    attn = SDPASelfAttention(c, heads=16)
    tokens = torch.randn(1, h * w, c)

    def sdpa_call():
        with torch.no_grad():
            return attn(tokens)
    med = _alternate({"block": block_call, "sdpa": sdpa_call}, ROUNDS)
    benchmark.pedantic(block_call, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    speedup = med["sdpa"] / med["block"]
    benchmark.extra_info.update({"block_ms": med["block"] * 1e3, "sdpa_ms": med["sdpa"] * 1e3, "speedup": speedup,
                                 "target_speedup": 8.0, "threads": torch.get_num_threads()})
    print(f"\npixart1024 fp32 fwd: block {med['block'] * 1e3:.1f} ms, SDPA layer {med['sdpa'] * 1e3:.1f} ms, "
          f"speedup {speedup:.1f}x (target >= 8)")
