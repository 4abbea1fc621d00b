"""The C++ CPU path: the whole `DeltaConvBlock` with backend="cpu" against the same block through
the `torch` reference (forward and forward+backward), against its own two GEMMs alone (the in- and out-projection
of the same shapes: the floor the block can approach, docs/DESIGN.md §2), and against a full SDPA self-attention layer;
fp32 and bf16, B=2 (a classifier-free-guidance batch), at the PixArt-1024 layer shape (64x64, C=1152, K=13, sigmoid
gate) and the SD1.5 level-1 shape (64x64, C=320, K=7, scaled gate).

pytest-benchmark times the `cpu` call. On a shared machine absolute times drift, so every test also times its
comparison in the same test, alternating calls, and stores both minima (the least disturbed runs) and their ratio
in extra_info (`--benchmark-json`) and prints it; the session ends with one table of every ratio (`-s` shows it).
The block / GEMMs ratio is also measured on one thread in process CPU time (`time.process_time`), which other
processes on a shared machine barely disturb: the kernels' own cost, free of the 2-thread scheduling noise.
Targets: cpu/torch <= 0.6 forward and <= 0.7 forward+backward; SDPA / block >= 8; block / GEMMs per shape and dtype
in GEMM_TARGETS. They are reported, not asserted: these are benchmarks, not tests.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from deltaconv_kernels import DeltaConvBlock, available_backends
from deltaconv_kernels.baselines.sdpa import SDPASelfAttention
from deltaconv_kernels.bench.timing import interleaved

CPU = available_backends()["cpu"]
pytestmark = pytest.mark.skipif(not CPU.available, reason=f"cpu backend unavailable: {CPU.reason}")

# name: (H, W, C, K, gate, SDPA heads)
SHAPES = {"pixart1024": (64, 64, 1152, 13, "sigmoid", 16), "sd15-level1": (64, 64, 320, 7, "scaled", 8)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BATCH = 2
TARGETS = {"fwd": 0.6, "fwd+bwd": 0.7}
GEMM_TARGETS = {("pixart1024", "fp32"): 1.25, ("pixart1024", "bf16"): 1.6,
                ("sd15-level1", "fp32"): 1.3, ("sd15-level1", "bf16"): 2.0}
ROUNDS = 5
SUMMARY: dict = {}  # (shape, dtype) -> {column: value}, printed at the end of the session


def _block(shape: str, dtype: torch.dtype, backend: str) -> DeltaConvBlock:
    h, w, c, k, gate, _ = SHAPES[shape]
    torch.manual_seed(0)
    return DeltaConvBlock(c, kernel_size=k, scales=(1.0, 0.5), gate=gate, backend=backend).to(dtype)


def _block_call(shape: str, dtype: torch.dtype, backend: str, mode: str):
    h, w, c, _, _, _ = SHAPES[shape]
    block = _block(shape, dtype, backend)
    x = torch.randn(BATCH, h, w, c, dtype=dtype)
    if mode == "fwd":
        def call():
            with torch.no_grad():
                return block(x)
        return call
    x.requires_grad_()
    grad = torch.randn(BATCH, h, w, c, dtype=dtype)

    def call_fb():
        block.zero_grad(set_to_none=True)
        x.grad = None
        block(x).backward(grad)
    return call_fb


def _gemms_call(shape: str, dtype: torch.dtype):
    """The block's two projections alone, as the block calls them: x @ W_in^T + b_in, then the batched
    out-projection with a per-sample bias (the same baddbmm), on a concat tensor of the block's shape."""
    h, w, c, _, _, _ = SHAPES[shape]
    block = _block(shape, dtype, "torch")
    x = torch.randn(BATCH, h, w, c, dtype=dtype)
    concat = torch.randn(BATCH, h * w, block.proj_out.in_features, dtype=dtype)
    bias = torch.randn(BATCH, 1, c, dtype=dtype)
    w_in, b_in, w_out = block.proj_in.weight.detach(), block.proj_in.bias.detach(), block.proj_out.weight.detach()

    def call():
        with torch.no_grad():
            return F.linear(x, w_in, b_in), torch.baddbmm(bias, concat, w_out.t().expand(BATCH, -1, -1))
    return call


def _alternate(calls: dict, rounds: int) -> dict:
    """Minimum seconds per call of each callable, timed round-robin so load drift hits all of them alike."""
    return {name: min(t.seconds) for name, t in interleaved(calls, rounds).items()}


def _alternate_cpu_time(calls: dict, rounds: int) -> dict:
    """Like `_alternate` on one thread, in process CPU time (time spent descheduled does not count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        timings = interleaved(calls, rounds, clock=time.process_time)
    finally:
        torch.set_num_threads(threads)
    return {name: min(t.seconds) for name, t in timings.items()}


def _record(shape: str, dtype: str, **values) -> None:
    SUMMARY.setdefault((shape, dtype), {}).update(values)


@pytest.mark.parametrize("mode", list(TARGETS))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_block_cpu_vs_torch(benchmark, shape, dtype, mode):
    benchmark.group = f"C++ CPU backend vs the PyTorch reference, {shape} {dtype} {mode}"
    cpu_call = _block_call(shape, DTYPES[dtype], "cpu", mode)
    torch_call = _block_call(shape, DTYPES[dtype], "torch", mode)
    med = _alternate({"cpu": cpu_call, "torch": torch_call}, ROUNDS)
    benchmark.pedantic(cpu_call, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    ratio = med["cpu"] / med["torch"]
    benchmark.extra_info.update({"cpu_ms": med["cpu"] * 1e3, "torch_ms": med["torch"] * 1e3, "ratio": ratio,
                                 "target_ratio": TARGETS[mode], "threads": torch.get_num_threads()})
    _record(shape, dtype, **{f"cpu {mode} ms": med["cpu"] * 1e3, f"torch {mode} ms": med["torch"] * 1e3,
                             f"cpu/torch {mode}": ratio})
    print(f"\n{shape} {dtype} {mode}: cpu {med['cpu'] * 1e3:.1f} ms, torch {med['torch'] * 1e3:.1f} ms, "
          f"ratio {ratio:.2f} (target <= {TARGETS[mode]})")


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_block_cpu_vs_gemms(benchmark, shape, dtype):
    benchmark.group = f"C++ CPU block vs its two GEMMs alone, {shape} {dtype} fwd"
    block_call = _block_call(shape, DTYPES[dtype], "cpu", "fwd")
    gemms_call = _gemms_call(shape, DTYPES[dtype])
    med = _alternate({"block": block_call, "gemms": gemms_call}, ROUNDS)
    benchmark.pedantic(block_call, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    ratio = med["block"] / med["gemms"]
    cpu = _alternate_cpu_time({"block": block_call, "gemms": gemms_call}, ROUNDS)
    cpu_ratio = cpu["block"] / cpu["gemms"]
    target = GEMM_TARGETS[(shape, dtype)]
    benchmark.extra_info.update({"block_ms": med["block"] * 1e3, "gemms_ms": med["gemms"] * 1e3, "ratio": ratio,
                                 "block_cpu_ms_1thread": cpu["block"] * 1e3, "gemms_cpu_ms_1thread": cpu["gemms"] * 1e3,
                                 "ratio_cpu_time_1thread": cpu_ratio, "target_ratio": target,
                                 "threads": torch.get_num_threads()})
    _record(shape, dtype, **{"block ms": med["block"] * 1e3, "GEMMs ms": med["gemms"] * 1e3, "block/GEMMs": ratio,
                             "block/GEMMs 1-thread CPU time": cpu_ratio})
    print(f"\n{shape} {dtype} fwd: block {med['block'] * 1e3:.1f} ms, GEMMs alone {med['gemms'] * 1e3:.1f} ms, "
          f"ratio {ratio:.2f}; one thread, CPU time: block {cpu['block'] * 1e3:.1f} ms, GEMMs "
          f"{cpu['gemms'] * 1e3:.1f} ms, ratio {cpu_ratio:.2f} (target <= {target})")


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_block_vs_sdpa(benchmark, shape, dtype):
    benchmark.group = f"C++ CPU block vs an SDPA self-attention layer, {shape} {dtype} fwd"
    h, w, c, _, _, heads = SHAPES[shape]
    block_call = _block_call(shape, DTYPES[dtype], "cpu", "fwd")
    torch.manual_seed(0)
    attn = SDPASelfAttention(c, heads=heads).to(DTYPES[dtype])
    tokens = torch.randn(BATCH, h * w, c, dtype=DTYPES[dtype])

    def sdpa_call():
        with torch.no_grad():
            return attn(tokens)
    med = _alternate({"block": block_call, "sdpa": sdpa_call}, ROUNDS)
    benchmark.pedantic(block_call, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    speedup = med["sdpa"] / med["block"]
    benchmark.extra_info.update({"block_ms": med["block"] * 1e3, "sdpa_ms": med["sdpa"] * 1e3, "speedup": speedup,
                                 "target_speedup": 8.0, "threads": torch.get_num_threads()})
    _record(shape, dtype, **{"SDPA ms": med["sdpa"] * 1e3, "SDPA/block": speedup})
    print(f"\n{shape} {dtype} fwd: block {med['block'] * 1e3:.1f} ms, SDPA layer {med['sdpa'] * 1e3:.1f} ms, "
          f"speedup {speedup:.1f}x (target >= 8)")


def summary_table() -> str:
    """The ratios of this session as a markdown table (the form benchmarks/RESULTS.md records)."""
    cols = ["block ms", "GEMMs ms", "block/GEMMs", "block/GEMMs 1-thread CPU time", "cpu/torch fwd",
            "cpu/torch fwd+bwd", "SDPA/block"]
    lines = ["| shape | dtype | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for (shape, dtype), row in SUMMARY.items():
        cells = [f"{row[c]:.2f}" if c in row else "-" for c in cols]
        lines.append(f"| {shape} | {dtype} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@pytest.fixture(scope="module", autouse=True)
def _print_summary():
    yield
    if SUMMARY:
        print(f"\nCPU backend ratios, B={BATCH}, {torch.get_num_threads()} threads, minima of {ROUNDS} alternating "
              f"calls:\n{summary_table()}")
