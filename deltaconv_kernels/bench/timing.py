"""How every benchmark of the package times and measures memory: the one implementation the layer grid
(bench/grid.py), the end-to-end denoiser steps (bench/e2e.py) and the CPU-backend suite share.

- `interleaved(calls, rounds)`: the callables are timed round-robin (one call of each per round, after warm-up
  calls of each), so a drift in machine load hits every method alike; each gets a `Timing` (all its round times,
  their median and interquartile range, and whether their spread is too large to trust: `unstable_reason`).
- `PeakMemory`: the memory one call adds at its peak (the CUDA allocator's peak, or the sampled RSS growth on CPU).
  It is measured on a call of its own, outside the timed rounds, so the sampler does not disturb the timings.
"""

from __future__ import annotations

import ctypes
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

# A figure is flagged unstable when its rounds spread more than this (a loaded machine shows up here):
IQR_LIMIT = 0.25          # interquartile range above this fraction of the median
MAX_OVER_MIN = 2.0        # or the slowest round (process) over this multiple of the fastest


@dataclass(frozen=True)
class Timing:
    """Round times of one method, seconds."""

    seconds: tuple[float, ...]

    @property
    def rounds(self) -> int:
        return len(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def iqr(self) -> float:
        """Interquartile range (0 with fewer than 2 rounds)."""
        if len(self.seconds) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.seconds, n=4, method="inclusive")
        return q3 - q1

    @property
    def unstable(self) -> str:
        """Why these rounds spread too much to trust their median ('' when they do not)."""
        return unstable_reason(self.seconds)


def unstable_reason(values, what: str = "rounds") -> str:
    """'' when `values` (round times, per-round ratios or process medians) agree; else what is too wide: an IQR
    above IQR_LIMIT of the median, or max / min above MAX_OVER_MIN."""
    t = Timing(tuple(float(v) for v in values))
    if t.rounds < 2:
        return ""
    med, iqr, values = t.median, t.iqr, t.seconds
    reasons = []
    if med > 0 and iqr > IQR_LIMIT * med:
        reasons.append(f"IQR {iqr / med:.0%} of the median (> {IQR_LIMIT:.0%})")
    if min(values) > 0 and max(values) / min(values) > MAX_OVER_MIN:
        reasons.append(f"max/min of the {what} {max(values) / min(values):.2f} (> {MAX_OVER_MIN:g})")
    return "; ".join(reasons)


class RoundRobin:
    """One call of each callable per `round()`, timed one by one: the unit `interleaved` repeats (and that a
    driver such as pytest-benchmark's pedantic mode can repeat instead)."""

    def __init__(self, calls: dict[str, Callable[[], object]], clock: Callable[[], float] = time.perf_counter):
        if not calls:
            raise ValueError("calls must name at least one callable")
        self.calls = dict(calls)
        self.clock = clock  # time.process_time: CPU time, which other processes on the machine barely disturb
        self.times: dict[str, list[float]] = {name: [] for name in self.calls}

    def round(self, record: bool = True) -> None:
        for name, f in self.calls.items():
            t0 = self.clock()
            f()
            if record:
                self.times[name].append(self.clock() - t0)

    def timings(self) -> dict[str, Timing]:
        return {name: Timing(tuple(ts)) for name, ts in self.times.items()}


def interleaved(calls: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, Timing]:
    """Time each callable `rounds` times, round-robin, after `warmup` untimed round-robin calls of each. The
    callables must synchronise their device themselves (see `synchronizer`)."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
    rr = RoundRobin(calls, clock)
    for _ in range(warmup):
        rr.round(record=False)
    for _ in range(rounds):
        rr.round()
    return rr.timings()


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What a timed callable calls at its end so that the time covers the device's work."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def spread(values) -> dict:
    """Median of per-process medians with their min and max: how fresh processes agree."""
    values = list(values)
    if not values:
        raise ValueError("spread needs at least one value")
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "processes": len(values)}


class PeakMemory:
    """Peak memory added while the block runs: the CUDA allocator's peak, or on CPU the growth of the process
    RSS sampled every 2 ms. glibc keeps freed memory mapped, so on entry `malloc_trim(0)` hands it back first;
    otherwise a warm call would reuse it and show no growth."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.peak_bytes: int | None = None
        self.method = "cuda max_memory_allocated" if self.device.type == "cuda" else "cpu RSS growth sampled every 2 ms"

    def _trim(self) -> None:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            self.method += " after malloc_trim"
        except (OSError, AttributeError):
            self.method += " (no glibc malloc_trim: warm calls may under-report)"

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._rss())
            self._stop.wait(0.002)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._trim()
            self._base = self._peak = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self._peak, self._rss()) - self._base


def peak_memory(call: Callable[[], object], device) -> tuple[int, str]:
    """(bytes, how measured) one call of `call` adds at its peak."""
    with PeakMemory(device) as mem:
        call()
    return mem.peak_bytes, mem.method
