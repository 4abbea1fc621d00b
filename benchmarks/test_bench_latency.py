"""Latency of one self-attention-layer replacement per method, layer shape and resolution (512² .. 16K), B = 2.

Run: `pytest benchmarks/ --benchmark-only` (fp32 on CPU, fp16 on CUDA; `--bench-dtype bf16`). Each test is one
(layer shape, resolution) group whose methods are timed round-robin, ΔConvBlock under the same per-call cap as
every baseline (deltaconv_kernels/bench/grid.py). PixArt with K = 25 (the paper's largest kernel) runs at 512² and
1K. pytest-benchmark's own figure for a test is the time of a whole round (every method once, added up); the
per-method times are in the latency table printed at the end and written to --bench-out.
"""

from __future__ import annotations

import pytest

from deltaconv_kernels.bench.cases import groups
from deltaconv_kernels.resolutions import resolution

K25_MAX = resolution("1K").pixels
GROUPS = [g for g in groups(("pixart", "sd15", "pixart-k25"), "16K")
          if g[0].model != "pixart-k25" or g[0].res.pixels <= K25_MAX]


@pytest.mark.parametrize("group", GROUPS, ids=[f"{g[0].model}-{g[0].res.label}" for g in GROUPS])
def test_latency(benchmark, bench_group, bench_max_res, group):
    res = group[0].res
    if res.pixels > bench_max_res.pixels:
        pytest.skip(f"{res.label} is above --bench-max-res={bench_max_res.label}")
    benchmark.group = (f"{group[0].model} layer at {res.label} ({res.height}x{res.width}): one call of each of its "
                       f"{len(group)} cases, added up (per-method times: the latency table)")
    bench_group(benchmark, group)
