"""Interleaved round-robin timing, the median/IQR of rounds, the process spread, peak memory and the rule that
flags a figure as unstable (bench/timing.py)."""

from __future__ import annotations

import pytest
import torch

from deltaconv_kernels.bench.timing import (
    IQR_LIMIT,
    MAX_OVER_MIN,
    PeakMemory,
    RoundRobin,
    Timing,
    interleaved,
    spread,
    unstable_reason,
)


def test_interleaved_runs_round_robin_after_untimed_warmup():
    log = []
    timings = interleaved({"a": lambda: log.append("a"), "b": lambda: log.append("b")}, rounds=3, warmup=2)
    assert log == ["a", "b"] * 5
    assert timings["a"].rounds == 3 and timings["b"].rounds == 3
    with pytest.raises(ValueError, match="rounds must be a positive int"):
        interleaved({"a": lambda: None}, rounds=0)
    with pytest.raises(ValueError, match="at least one callable"):
        RoundRobin({})


def test_timing_median_iqr_and_spread():
    t = Timing((1.0, 2.0, 3.0, 4.0, 100.0))
    assert t.median == 3.0 and t.iqr == pytest.approx(2.0)
    assert Timing((5.0,)).iqr == 0.0
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "processes": 3}


def test_peak_memory_sees_an_allocation():
    with PeakMemory(torch.device("cpu")) as mem:
        x = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched
        x.add_(1)
        del x
    assert mem.peak_bytes >= 32 << 20  # the 2 ms sampler sees most of it


def test_unstable_when_the_iqr_or_the_max_over_min_is_too_large():
    assert unstable_reason([1.0, 1.01, 0.99, 1.02, 0.98]) == ""
    assert unstable_reason([1.0]) == ""  # one value has no spread
    wide = unstable_reason([1.0, 1.0, 2.0, 2.0, 2.0])  # IQR 1.0 over a median of 2.0
    assert f"> {IQR_LIMIT:.0%}" in wide and "IQR 50% of the median" in wide
    spike = unstable_reason([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.5])  # one slow round, IQR 0
    assert "IQR" not in spike and f"max/min of the rounds 2.50 (> {MAX_OVER_MIN:g})" in spike
    assert Timing((11.15e-3, 2e-3, 100e-3, 9e-3, 12e-3)).unstable  # the loaded machine's IQR far above the median
    assert Timing((1.0, 1.1, 1.05, 0.95, 1.0)).unstable == ""
