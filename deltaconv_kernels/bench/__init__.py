"""Benchmarks of ΔConvBlock against the attention baselines. One job per module, imports in one direction:

    config <- timing <- records <- fit <- cases <- layers <- grid, e2e (<- denoisers) <- report <- cli

- config: methods, layer shapes, models, DiTFastAttn's step modes, `BenchConfig` (the one settings object)
- timing: interleaved round-robin timing, peak memory, the instability rule
- records: the one `Record` schema, the environment block, the one JSON reader/writer of both benchmarks
- fit: the FLOPs-anchored extrapolation
- cases / layers: the grid's cases; each method's layer, its timed call, FLOPs and memory estimate
- grid: the layer grid (planner, round-robin groups, speedups, fresh processes)
- denoisers: the full-size and tiny denoiser configs (plain data)
- e2e: whole denoiser steps, one layer's forward+backward, torch.compile (needs diffusers; not imported here)
- report: tables, markdown, the plot, RESULTS.md's generated section (`python -m deltaconv_kernels.bench.report`)
- cli: `deltaconv bench` and `deltaconv bench e2e`

The names below are the old `deltaconv_kernels.bench` module's public names, kept for one release (its JSON
functions are `records.read_json` / `records.write_json` now, with one signature for both benchmarks).
"""

from deltaconv_kernels.bench.cases import Case, cases_for, groups
from deltaconv_kernels.bench.config import DITFASTATTN_MODES, METHODS, MODELS, SHAPES, BenchConfig
from deltaconv_kernels.bench.grid import Planner, measure_group, merge_processes, run_grid, schedule_averages
from deltaconv_kernels.bench.layers import build_layer, case_flops, make_call
from deltaconv_kernels.bench.records import Record, environment
from deltaconv_kernels.dtypes import DTYPES, dtype_name
from deltaconv_kernels.resolutions import GRID as RESOLUTIONS
from deltaconv_kernels.resolutions import Resolution, resolution

__all__ = [
    "DITFASTATTN_MODES", "DTYPES", "METHODS", "MODELS", "RESOLUTIONS", "SHAPES", "BenchConfig", "Case", "Planner",
    "Record", "Resolution", "build_layer", "case_flops", "cases_for", "dtype_name", "environment", "groups",
    "make_call", "measure_group", "merge_processes", "resolution", "run_grid", "schedule_averages",
]
