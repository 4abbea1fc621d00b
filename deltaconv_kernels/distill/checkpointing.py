"""Atomic training checkpoints (through `fileio.atomic_write`: temporary file, fsync, `os.replace`), so a crash
at any moment leaves either the previous checkpoint or the new one, never a torn file."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deltaconv_kernels.fileio import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


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
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file: a clear error, not a pickle traceback
        raise ValueError(f"{path} is not a readable deltaconv distill checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a deltaconv distill checkpoint (format_version {FORMAT_VERSION})")
    return state


def check_resume_config(saved: dict, current: dict, keys: tuple[str, ...]) -> None:
    """Refuse to resume when a setting that changes the training trajectory differs from the checkpoint's."""
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in keys
             if saved.get(k) != current.get(k)]
    if diffs:
        raise ValueError("cannot resume bit-for-bit, these settings differ from the checkpoint's: " + "; ".join(diffs))
