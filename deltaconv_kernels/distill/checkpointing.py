"""Atomic training checkpoints (through `fileio.atomic_write`: temporary file, fsync, `os.replace`), so a crash
at any moment leaves either the previous checkpoint or the new one, never a torn file.

The file is one safetensors archive, so loading it never unpickles (a checkpoint copied from someone else cannot
run code): the tensors (weights, optimizer state, torch/CUDA RNG states as uint8) are its tensors and everything
else (step, config, history, numpy and Python RNG states as plain numbers) is JSON in its metadata, with each
tensor replaced by a reference to its name. Checkpoints of the old pickled format are refused unless trusted."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deltaconv_kernels.fileio import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 2  # 1: the old pickled torch.save file
_STATE_KEY = "deltaconv_distill_state"


class UntrustedCheckpointError(ValueError):
    """An old-format (pickled) checkpoint, refused because unpickling can run code from the file."""


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


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """`obj` as JSON-able data; its tensors move to `tensors` (under fresh names) and are left as references.
    Tuples, numpy arrays and dicts with non-string keys are tagged so that `_decode` restores their types."""
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous().clone()  # own storage: safetensors refuses shared ones
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    raise TypeError(f"cannot store a {type(obj).__name__} in a distill checkpoint (tensors, numbers, strings, "
                    "lists, tuples, dicts and numpy arrays only)")


def _decode(data: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(data, list):
        return [_decode(v, tensors) for v in data]
    if not isinstance(data, dict):
        return data
    if "__tensor__" in data:
        return tensors[data["__tensor__"]]
    if "__ndarray__" in data:
        return np.array(data["__ndarray__"], dtype=data["dtype"])
    if "__tuple__" in data:
        return tuple(_decode(v, tensors) for v in data["__tuple__"])
    if "__items__" in data:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in data["__items__"]}
    return {k: _decode(v, tensors) for k, v in data.items()}


def save_checkpoint(path: str | os.PathLike, *, step: int, trainable: dict[str, torch.Tensor],
                    optimizer_state: dict, lr_scheduler_state: dict, scaler_state: dict | None,
                    config: dict, history: list[dict]) -> Path:
    from safetensors.torch import save

    state = {
        "format_version": FORMAT_VERSION, "step": step, "trainable": trainable,
        "optimizer": optimizer_state, "lr_scheduler": lr_scheduler_state, "scaler": scaler_state,
        "rng": rng_state(), "config": config, "history": history,
    }
    tensors: dict[str, torch.Tensor] = {}
    # json writes floats by repr (exact round trip) and NaN/inf as tokens it reads back: resume stays bit-identical.
    meta = json.dumps(_encode(state, tensors))
    blob = save(tensors, metadata={_STATE_KEY: meta})
    return atomic_write(path, lambda f: f.write(blob))


def _is_safetensors(blob: bytes) -> bool:
    """An 8-byte little-endian header length, then a JSON header (checked first: the length's low byte can be
    anything, 0x80 included)."""
    return len(blob) >= 9 and int.from_bytes(blob[:8], "little") <= len(blob) - 8 and blob[8:9] == b"{"


def _is_pickle(blob: bytes) -> bool:
    """torch.save's zip archive, or a legacy pickle stream (protocol 2+ starts with 0x80)."""
    return blob.startswith(b"PK\x03\x04") or blob[:1] == b"\x80"


def _load_trusted_pickle(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)  # trusted by the caller: runs its code
    except Exception as e:
        raise ValueError(f"{path} is not a readable deltaconv distill checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format_version") != 1:
        raise ValueError(f"{path} is not an old-format deltaconv distill checkpoint (format_version 1)")
    return state


def load_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, Any]:
    """The state `save_checkpoint` wrote. Never unpickles, unless `trust_pickle` lets it read an old-format
    (pickled) checkpoint, which runs any code the file holds: only for files you wrote yourself."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"resume checkpoint {path} does not exist (checkpoints are written to "
                                f"<output_dir>/{CHECKPOINT_NAME} every --checkpoint-every steps)")
    blob = path.read_bytes()
    if not _is_safetensors(blob) and _is_pickle(blob):
        if trust_pickle:
            return _load_trusted_pickle(path)
        raise UntrustedCheckpointError(
            f"{path} is an old-format (pickled) checkpoint; loading it would run any code it holds, so it is "
            "refused. If you wrote it yourself, resume once with --trust-checkpoint (the next checkpoint is "
            "written in the safe format)")
    try:
        tensors = load(blob)
        n = int.from_bytes(blob[:8], "little")
        meta = json.loads(blob[8:8 + n]).get("__metadata__") or {}
        state = _decode(json.loads(meta[_STATE_KEY]), tensors)
    except (SafetensorError, ValueError, KeyError, TypeError, OverflowError) as e:
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
