"""The compiled extension `deltaconv_kernels._C`: whether it can be loaded here and what it contains.

`_C` is C++ compiled against one torch; loaded into another it may fail to import or misbehave. The build writes
the torch it compiled against next to `_C` (_C_build.json, python/build_helpers.py), and `_C` is loaded only when
that is the running torch: a mismatch, like a missing or broken build, is a reason the cpu and cuda backends
report (never an import error). The cpu and cuda backends and `deltaconv info` read the build from here.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
from pathlib import Path

import torch

RECORD = Path(__file__).resolve().parent.parent / "_C_build.json"
OPS = ("pyramid_forward", "pyramid_backward", "pooled_bias", "build_info", "cpu_capability")
REBUILD = "rebuild it with `pip install .` (without DELTACONV_SKIP_EXT)"


def build_record() -> dict | None:
    """The build record written next to `_C` (torch, torch_cuda, cuda_home), or None without one."""
    try:
        record = json.loads(RECORD.read_text(encoding="utf-8"))
        record["torch"]
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        raise RuntimeError(f"{RECORD} is not a build record ({type(e).__name__}: {e}); {REBUILD}") from None
    return record


def built_against() -> str | None:
    """The torch version `_C` was compiled against, or None without a build record."""
    record = build_record()
    return None if record is None else record["torch"]


def mismatch(built: str, running: str) -> str | None:
    """Why a `_C` built against torch `built` cannot be loaded into torch `running` (None when it can)."""
    if built != running:
        return (f"deltaconv_kernels._C was built against torch {built} but torch {running} is running; "
                f"{REBUILD} against this torch")
    return None


@functools.cache
def problem() -> str | None:
    """None once `_C` is loaded with all its ops, else why it cannot be. Loads `_C` at most once."""
    try:
        built = built_against()
    except RuntimeError as e:
        return str(e)
    if built is None:
        if importlib.util.find_spec("deltaconv_kernels._C") is None:
            return "the C++ extension deltaconv_kernels._C is not built; build it with `pip install .`"
        return f"deltaconv_kernels._C has no build record ({RECORD.name} next to it); {REBUILD}"
    reason = mismatch(built, str(torch.__version__))
    if reason:
        return reason
    try:
        importlib.import_module("deltaconv_kernels._C")  # registers torch.ops.deltaconv_C
    except ImportError as e:
        return f"deltaconv_kernels._C fails to load ({e}); {REBUILD}"
    missing = [op for op in OPS if not hasattr(torch.ops.deltaconv_C, op)]
    if missing:
        return f"deltaconv_kernels._C lacks the ops {missing}; {REBUILD}"
    return None


def _loaded() -> None:
    reason = problem()
    if reason:
        raise RuntimeError(reason)


def build_info() -> dict:
    """What `_C` contains: the torch it was built against, the CPU instruction sets compiled in and those this CPU
    can run (lowest first), and whether CUDA kernels were compiled and for which architectures ("8.0", ...)."""
    _loaded()
    raw = dict(kv.split("=", 1) for kv in torch.ops.deltaconv_C.build_info().split())
    archs = [] if raw["cuda_archs"] == "-" else raw["cuda_archs"].split(",")
    return {"torch": built_against(), "cpu_compiled": raw["cpu_compiled"].split(","),
            "cpu_runnable": [c for c in raw["cpu_runnable"].split(",") if c], "cuda": raw["cuda"] == "1",
            "cuda_archs": [f"{int(a) // 100}.{int(a) % 100 // 10}" for a in archs]}


def cpu_capability() -> str:
    """The instruction set the next CPU kernel call runs: $DELTACONV_CPU_CAPABILITY, else the best this CPU has.
    Raises RuntimeError when the variable names one that this build or this CPU cannot run."""
    _loaded()
    return torch.ops.deltaconv_C.cpu_capability()


def describe() -> str:
    """One line on the build for `deltaconv info`."""
    reason = problem()
    if reason:
        return f"not loaded: {reason}"
    info = build_info()
    try:
        chosen = cpu_capability()
        forced = os.environ.get("DELTACONV_CPU_CAPABILITY")
        chosen += f" (DELTACONV_CPU_CAPABILITY={forced})" if forced else " (the best this CPU runs)"
    except RuntimeError as e:
        chosen = f"none: {e}"
    cuda = f"compiled for {', '.join(info['cuda_archs'])}" if info["cuda"] else "not compiled"
    home = (build_record() or {}).get("cuda_home")
    cuda += f" (CUDA_HOME {home})" if info["cuda"] and home else ""
    return (f"built against torch {info['torch']}; CPU kernels compiled for {', '.join(info['cpu_compiled'])}, "
            f"runnable here {', '.join(info['cpu_runnable']) or 'none'}, running {chosen}; CUDA kernels {cuda}")
