"""Latency of one self-attention-layer replacement per method, model layer shape and resolution (512² .. 16K).

Run: `pytest benchmarks/ --benchmark-only` (fp32 on CPU, fp16 on CUDA). Cases of one method run in increasing
size; a case too slow or too big for the device is skipped with the reason and its time extrapolated from the
power law fitted on the sizes that ran (see deltaconv_kernels/bench.py). The table at the end marks them `~x*`.
"""

from __future__ import annotations

import pytest

from deltaconv_kernels import bench

CASES = bench.cases(bench.METHODS, bench.MODELS, "16K")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_latency(benchmark, bench_runner, bench_max_res, case):
    if case.res.pixels > bench_max_res.pixels:
        pytest.skip(f"{case.res.label} is above --bench-max-res={bench_max_res.label}")
    benchmark.group = f"{case.model} {case.res.label} ({case.res.height}x{case.res.width})"
    bench_runner(benchmark, case)
