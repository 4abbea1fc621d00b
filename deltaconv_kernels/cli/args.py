"""Checks and parsers of command-line values shared by the subcommands. Each raises ValueError naming the option
and what it expects; the dispatcher prints it as `deltaconv <command>: error: ...` with exit code 2."""

from __future__ import annotations

from pathlib import Path

import torch

from deltaconv_kernels.dtypes import ALIASES, DTYPES
from deltaconv_kernels.resolutions import Resolution, resolution


def check_device(name: str, option: str = "--device") -> torch.device:
    """`cpu` or `cuda[:i]` on a machine that has it, as a torch.device."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{option} must be cpu or cuda, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{option} must be cpu or cuda, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option} {name}: no CUDA GPU is available here (torch.cuda.is_available() is False)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{option} {name}: there are only {torch.cuda.device_count()} CUDA devices")
    return device


def check_output_dir(path, option: str) -> Path:
    """A folder that exists or can be created: refused up front when it (or a parent) is a file."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise ValueError(f"{option} {path}: {p} is a file, not a folder")
    return path


def check_at_least(value, minimum, option: str):
    if value is not None and not value >= minimum:
        raise ValueError(f"{option} must be >= {minimum}, got {value}")
    return value


def check_positive(value, option: str):
    if value is not None and not value > 0:
        raise ValueError(f"{option} must be > 0, got {value}")
    return value


def parse_dtype(text: str, option: str = "--dtype") -> torch.dtype:
    """`fp32|fp16|bf16`, or torch's `float32|float16|bfloat16`."""
    name = ALIASES.get(str(text).lower(), str(text).lower())
    if name not in DTYPES:
        spellings = "|".join([*DTYPES, *ALIASES])
        raise ValueError(f"{option} must be one of {spellings}, got {text!r}")
    return DTYPES[name]


def parse_resolution(text: str, option: str) -> Resolution:
    """A named size or `N` / `HxW` pixels (deltaconv_kernels.resolutions)."""
    try:
        return resolution(text)
    except ValueError as exc:
        raise ValueError(f"{option}: {exc}") from None


def _items(text) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def split_list(text: str, option: str) -> list[str]:
    """A non-empty comma-separated list."""
    items = _items(text)
    if not items:
        raise ValueError(f"{option} must be a non-empty comma-separated list, got {text!r}")
    return items


def split_choices(text: str, allowed, option: str) -> list[str]:
    """A comma-separated, non-empty subset of `allowed`."""
    items = _items(text)
    if not items or any(t not in allowed for t in items):
        raise ValueError(f"{option} must be a comma-separated subset of {tuple(allowed)}, got {text!r}")
    return items
