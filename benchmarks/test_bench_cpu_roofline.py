"""The CPU roofline of the pyramid: its FMA count, the FMA rate the `cpu` kernels reach on it, and the FMA rate of an
fp32 GEMM measured in the same run (the machine's practical peak on these cores), per dtype and layer shape
(docs/DESIGN.md §2). Also the whole block against its own two GEMMs in the block's dtype (block / GEMMs).

Shapes, B=2 (a classifier-free-guidance batch): PixArt-1024 (64x64, C=1152, K=13, sigmoid gate) and SD1.5 level 1
(64x64, C=320, K=7, scaled gate), scales (1, 0.5). Every callable of a (shape, dtype) case is timed round-robin
(interleaved rounds, the minimum of ROUNDS: the least disturbed call on a shared machine), so the ratios of a row
come from one run. These are benchmarks, not tests: nothing is asserted.

    pytest benchmarks/test_bench_cpu_roofline.py --benchmark-only -s    # prints the table at the end
    python benchmarks/test_bench_cpu_roofline.py [--rounds 7] [--json]    # the same table (or JSON) without pytest
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import pytest
import torch
import torch.nn.functional as F

from deltaconv_kernels import DeltaConvBlock, available_backends, ops
from deltaconv_kernels.bench.timing import interleaved
from deltaconv_kernels.geometry import pooled_size
from deltaconv_kernels.ops import extension

CPU = available_backends()["cpu"]
pytestmark = pytest.mark.skipif(not CPU.available, reason=f"cpu backend unavailable: {CPU.reason}")

# name: (H, W, C, K, gate)
SHAPES = {"pixart1024": (64, 64, 1152, 13, "sigmoid"), "sd15-level1": (64, 64, 320, 7, "scaled")}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SCALES = (1.0, 0.5)
BATCH = 2
ROUNDS = 7
ROWS: dict = {}  # (shape, dtype) -> row of the table, printed at the end of the session


def block_for(shape: str, dtype: torch.dtype) -> DeltaConvBlock:
    _, _, c, k, gate = SHAPES[shape]
    torch.manual_seed(0)
    return DeltaConvBlock(c, kernel_size=k, scales=SCALES, gate=gate, backend="cpu").to(dtype)


def pyramid_fmas(block: DeltaConvBlock, batch: int, h: int, w: int) -> int:
    """Multiply-adds of the pyramid's depthwise convolutions: every stage correlates all Ci channels of u (both
    gate halves) with its K x K kernel at its pooled size. Pooling, gate and upsampling are not FMAs of the
    convolution and not counted."""
    k = block.kernel_size
    return sum(batch * ph * pw * block.inner_dim * k * k for ph, pw in (pooled_size(h, w, s) for s in block.scales))


def gemm_fmas(block: DeltaConvBlock, batch: int, h: int, w: int) -> int:
    """Multiply-adds of the block's in- and out-projection."""
    concat = block.inner_dim // 2 * len(block.scales)
    return batch * h * w * (block.dim * block.inner_dim + concat * block.dim)


def case_calls(shape: str, dtype: torch.dtype) -> tuple[dict, DeltaConvBlock]:
    """The callables one case times: the block (cpu backend), its pyramid alone, its two GEMMs in the block's
    dtype (as the block calls them) and the same GEMMs in fp32 (the FMA-rate reference)."""
    h, w, c, _, _ = SHAPES[shape]
    block = block_for(shape, dtype)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, h, w, c, generator=gen).to(dtype)
    with torch.no_grad():
        u = F.linear(x, *block.proj_in())
    weights = [stage().detach() for stage in block.stages]
    concat = torch.randn(BATCH, h * w, block.proj_out.in_features, generator=gen)
    bias = torch.randn(BATCH, 1, c, generator=gen)
    in_w, in_b = (t.detach().float() for t in block.proj_in())
    out_w = block.proj_out()[0].detach().float()

    def gemms(dt):
        xs, ws, bs, cs, ow, b0 = (t.to(dt) for t in (x, in_w, in_b, concat, out_w, bias))

        def call():
            return F.linear(xs, ws, bs), torch.baddbmm(b0, cs, ow.t().expand(BATCH, -1, -1))
        return call

    def block_call():
        return block(x)

    def pyramid_call():
        return ops.pyramid(u, weights, block.scales, block.gate, block.gate_scale, "cpu")

    calls = {"block": block_call, "pyramid": pyramid_call, "gemms": gemms(dtype), "gemms_fp32": gemms(torch.float32)}
    return calls, block


def measure(shape: str, dtype_name: str, rounds: int = ROUNDS, cpu_time: bool = False) -> dict:
    """One row of the roofline table: minima (s) of interleaved rounds, FMA counts and rates. `cpu_time`: on one
    thread in process CPU time, which other processes on a shared machine barely disturb."""
    h, w, _, _, _ = SHAPES[shape]
    calls, block = case_calls(shape, DTYPES[dtype_name])
    threads = torch.get_num_threads()
    if cpu_time:
        torch.set_num_threads(1)
    try:
        with torch.no_grad():
            timings = interleaved(calls, rounds, clock=time.process_time if cpu_time else time.perf_counter)
    finally:
        torch.set_num_threads(threads)
    t = {name: min(timing.seconds) for name, timing in timings.items()}
    p_fma, g_fma = pyramid_fmas(block, BATCH, h, w), gemm_fmas(block, BATCH, h, w)
    return {"shape": shape, "dtype": dtype_name, "pyramid_gfma": p_fma / 1e9, "pyramid_ms": t["pyramid"] * 1e3,
            "pyramid_gfma_per_s": p_fma / t["pyramid"] / 1e9, "gemm_fp32_gfma_per_s": g_fma / t["gemms_fp32"] / 1e9,
            "pyramid_vs_gemm_rate": (p_fma / t["pyramid"]) / (g_fma / t["gemms_fp32"]),
            "block_ms": t["block"] * 1e3, "gemms_ms": t["gemms"] * 1e3, "block_over_gemms": t["block"] / t["gemms"],
            "threads": 1 if cpu_time else threads, "clock": "process CPU time" if cpu_time else "wall",
            "cpu_kernels": extension.cpu_capability()}


COLUMNS = (("pyramid_gfma", "pyramid G FMA", 3), ("pyramid_ms", "pyramid ms", 1),
           ("pyramid_gfma_per_s", "pyramid G FMA/s", 1), ("gemm_fp32_gfma_per_s", "fp32 GEMM G FMA/s", 1),
           ("pyramid_vs_gemm_rate", "pyramid / GEMM rate", 2), ("block_ms", "block ms", 1),
           ("gemms_ms", "GEMMs ms", 1), ("block_over_gemms", "block / GEMMs", 2))


def table(rows) -> str:
    lines = ["| shape | dtype | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['dtype']} | " +
                     " | ".join(f"{r[key]:.{digits}f}" for key, _, digits in COLUMNS) + " |")
    return "\n".join(lines)


def header(rounds: int, cpu_time: bool = False) -> str:
    how = "1 thread, process CPU time" if cpu_time else f"{torch.get_num_threads()} threads, wall time"
    return (f"CPU roofline, B={BATCH}, {how}, {platform.processor() or platform.machine()}, cpu kernels "
            f"{extension.cpu_capability()}, minima of {rounds} interleaved rounds")


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_cpu_pyramid_roofline(benchmark, shape, dtype):
    benchmark.group = f"CPU roofline: pyramid FMA rate vs fp32 GEMM, {shape} {dtype}"
    row = measure(shape, dtype)
    calls, _ = case_calls(shape, DTYPES[dtype])
    with torch.no_grad():
        benchmark.pedantic(calls["pyramid"], rounds=ROUNDS, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(row)
    ROWS[(shape, dtype)] = row


@pytest.fixture(scope="module", autouse=True)
def _print_table():
    yield
    if ROWS:
        print(f"\n{header(ROUNDS)}\n{table(ROWS.values())}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="CPU roofline table of the pyramid (markdown, or JSON rows)")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of the table")
    parser.add_argument("--cpu-time", action="store_true", help="one thread, process CPU time (shared machines)")
    args = parser.parse_args(argv)
    if not CPU.available:
        parser.error(f"cpu backend unavailable: {CPU.reason}")
    rows = [measure(shape, dtype, args.rounds, args.cpu_time) for shape in SHAPES for dtype in DTYPES]
    print(json.dumps(rows) if args.json else f"{header(args.rounds, args.cpu_time)}\n{table(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
