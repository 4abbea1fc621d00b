"""Fake measurements for the benchmark tests: a CPU planner, the FLOPs of a case, a record as if measured."""

from __future__ import annotations

import torch

from deltaconv_kernels.bench.cases import Case
from deltaconv_kernels.bench.config import BenchConfig
from deltaconv_kernels.bench.grid import Planner
from deltaconv_kernels.bench.layers import case_flops
from deltaconv_kernels.bench.records import Record
from deltaconv_kernels.resolutions import resolution

SCHEMA = {"method", "model", "resolution", "dtype", "batch", "implementation", "seconds_median", "seconds_iqr",
          "rounds", "processes", "peak_bytes", "flops_executed", "flops_ideal", "extrapolated", "fit", "unstable"}


def planner(**kw) -> Planner:
    return Planner(BenchConfig.for_device("cpu", torch.float32, 2, **kw))


def flops_of(case: Case) -> tuple[float, float]:
    return case_flops(case, 2, "reference" if case.method in ("neighborhood", "ditfastattn") else "test")


def fake(p: Planner, method: str, model: str, label: str, seconds: float, mode: str = "forward",
         unstable: str = "") -> Record:
    case = Case(method, model, resolution(label), mode)
    executed, ideal = flops_of(case)
    rec = p.record_for(case, "test", executed, ideal, seconds_median=seconds, seconds_iqr=0.0, rounds=5,
                       unstable=unstable)
    p.records.append(rec)
    return rec
