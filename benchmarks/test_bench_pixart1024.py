"""The foundation benchmark (issue 2): DeltaConvBlock (automatic backend) against a full SDPA self-attention
layer at a PixArt-1024² layer shape (N = 64 x 64 = 4096 tokens, C = 1152, 16 heads) on the benchmark device.
Both always run (only a memory shortfall skips them); which ΔConvBlock backend ran is in extra_info."""

from __future__ import annotations

import pytest

from deltaconv_kernels import bench


@pytest.mark.parametrize("method", ["deltaconv", "sdpa"])
def test_pixart1024_deltaconv_vs_sdpa(benchmark, bench_runner, method):
    benchmark.group = "issue 2: PixArt 1024² layer (N=4096, C=1152): DeltaConvBlock vs SDPA"
    bench_runner(benchmark, bench.Case(method, "pixart", bench.resolution("1K")), force=True)
