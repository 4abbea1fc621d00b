"""The one schema every benchmark writes (`Record`), the environment block, and the one reader and writer of the
JSON files (bench.json of the layer grid, end_to_end.json of the end-to-end benchmark)."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deltaconv_kernels.bench.config import BenchConfig
from deltaconv_kernels.dtypes import dtype_name
from deltaconv_kernels.fileio import atomic_write


@dataclass
class Record:
    """One measured (or extrapolated) case as the JSON files store it."""

    method: str                 # deltaconv, sdpa, neighborhood, ditfastattn, linfusion, mediator, ...
    model: str                  # layer shape or whole model: pixart, sd15, sdxl, ...
    resolution: str             # label, e.g. "1K", "4K", "768", "1024x768"
    height: int                 # image pixels
    width: int
    dtype: str                  # fp32, bf16, fp16
    batch: int
    implementation: str         # what ran: "cpu", "flex", "natten", "reference", "torch-sdpa", ...
    seconds_median: float | None
    seconds_iqr: float | None
    rounds: int
    processes: int
    peak_bytes: int | None
    flops_executed: float       # FLOPs the timed implementation executes
    flops_ideal: float          # the method's ideal count (flops.method_flops)
    extrapolated: bool
    fit: dict | None = None     # when extrapolated: the fit and its uncertainty band
    mode: str = "forward"       # forward, forward+backward, denoiser step, or a DiTFastAttn step mode
    reason: str = ""            # why it was not measured, when extrapolated or skipped
    extra: dict | None = None   # anything else (per-process medians, peak-memory method, ...)
    unstable: str = ""          # why its spread is too large to trust (timing.unstable_reason); '' when it is not


@dataclass
class BenchData:
    """What a JSON file holds."""

    environment: dict
    records: list[Record]
    speedups: list[dict] = field(default_factory=list)
    command: str | None = None


def environment(cfg: BenchConfig) -> dict:
    """The machine and the settings; the load averages (1, 5, 15 min) as of this call: take it after the run."""
    dev = torch.cuda.get_device_name(cfg.device) if cfg.device.type == "cuda" else _cpu_name()
    return {"device": dev, "device_type": cfg.device.type, "dtype": dtype_name(cfg.dtype), "batch": cfg.batch,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "max_call_s": cfg.max_call_s, "budget_s": cfg.budget_s, "rounds": cfg.rounds, "warmup": cfg.warmup,
            "load_avg": [round(v, 2) for v in os.getloadavg()], "cpu_count": os.cpu_count()}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), platform.processor())
    except OSError:
        name = platform.processor()
    return f"{name} ({os.cpu_count()} logical CPUs)"


def write_json(path: Path, data: BenchData) -> None:
    payload = {"environment": data.environment, **({"command": data.command} if data.command else {}),
               "records": [dataclasses.asdict(r) for r in data.records], "speedups": data.speedups}
    text = json.dumps(payload, indent=2).encode()
    atomic_write(Path(path), lambda f: f.write(text))


def parse_json(data: dict) -> BenchData:
    """A loaded JSON file (earlier layer-grid files name their records "results")."""
    records = data["records"] if "records" in data else data["results"]
    return BenchData(data["environment"], [Record(**d) for d in records], data.get("speedups", []),
                     data.get("command"))


def read_json(path) -> BenchData:
    return parse_json(json.loads(Path(path).read_text()))


def case_key(r: Record) -> tuple:
    """What makes two records the same case: a rerun of it replaces the older record."""
    return (r.mode, r.model, r.resolution, r.dtype, r.batch, r.method, r.implementation)


def merge_records(old: list[Record], new: list[Record]) -> list[Record]:
    """`old` with each case that `new` measured again replaced in place, then `new`'s other cases."""
    fresh = {case_key(r): r for r in new}
    merged = [fresh.pop(case_key(r), r) for r in old]
    return merged + list(fresh.values())
