"""Latency of one self-attention-layer replacement per method, layer shape and resolution (512² .. 16K), B = 2.

Run: `pytest benchmarks/ --benchmark-only` (fp32 on CPU, fp16 on CUDA; `--bench-dtype bf16`). Each test is one
(layer shape, resolution) group whose methods are timed round-robin, ΔConvBlock under the same per-call cap as
every baseline (deltaconv_kernels/bench.py). PixArt with K = 25 (the paper's largest kernel) runs at 512² and 1K.
"""

from __future__ import annotations

import pytest

from deltaconv_kernels import bench

K25_MAX = bench.resolution("1K").pixels
GROUPS = [g for g in bench.groups(("pixart", "sd15", "pixart-k25"), "16K")
          if g[0].model != "pixart-k25" or g[0].res.pixels <= K25_MAX]


@pytest.mark.parametrize("group", GROUPS, ids=[f"{g[0].model}-{g[0].res.label}" for g in GROUPS])
def test_latency(benchmark, bench_group, bench_max_res, group):
    res = group[0].res
    if res.pixels > bench_max_res.pixels:
        pytest.skip(f"{res.label} is above --bench-max-res={bench_max_res.label}")
    benchmark.group = f"{group[0].model} {res.label} ({res.height}x{res.width}): one round of every method"
    bench_group(benchmark, group)
