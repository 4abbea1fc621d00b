"""Atomic training checkpoints: write to a temporary file in the same folder, fsync, then `os.replace`, so a
crash at any moment leaves either the previous checkpoint or the new one, never a torn file."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call `write(file_object)` on a temporary file next to `path`, then atomically move it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, *, step: int, trainable: dict[str, torch.Tensor],
                    optimizer_state: dict, lr_scheduler_state: dict, scaler_state: dict | None,
                    config: dict, history: list[dict]) -> Path:
    state = {
        "format_version": FORMAT_VERSION, "step": step,
        "trainable": {k: v.detach().cpu().clone() for k, v in trainable.items()},
        "optimizer": optimizer_state, "lr_scheduler": lr_scheduler_state, "scaler": scaler_state,
        "rng": rng_state(), "config": config, "history": history,
    }
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"resume checkpoint {path} does not exist (checkpoints are written to "
                                f"<output_dir>/{CHECKPOINT_NAME} every --checkpoint-every steps)")
    # weights_only=False: the state holds numpy/python RNG states, written by this module, not downloaded.
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a deltaconv distill checkpoint (format_version {FORMAT_VERSION})")
    return state


def check_resume_config(saved: dict, current: dict, keys: tuple[str, ...]) -> None:
    """Refuse to resume when a setting that changes the training trajectory differs from the checkpoint's."""
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in keys
             if saved.get(k) != current.get(k)]
    if diffs:
        raise ValueError("cannot resume bit-for-bit, these settings differ from the checkpoint's: " + "; ".join(diffs))
