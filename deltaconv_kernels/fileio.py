"""The one atomic file write of the package (checkpoints, logs, plots, ΔConvBlock weights) and the clean-up of
what an interrupted one leaves behind.

`atomic_write` writes a temporary file `.<name>.<random>.tmp` in the target's folder, fsyncs it, gives it the mode
a plain `open()` would (0o666 minus the umask, like `save_pretrained`; mkstemp's own 0600 is not kept), and moves it
onto the target with `os.replace`: a reader, or a crash at any moment, sees the old file or the new one, never a
torn one. A kill -9 between mkstemp and the replace leaves the temporary file: `remove_stale_temps` deletes those.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    """The process umask: read from /proc on Linux (no change, so thread-safe), else set and restored."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_prefix(path: Path) -> str:
    return f".{path.name}."


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call `write(binary_file_object)` on a temporary file next to `path`, then atomically move it onto `path`
    (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def remove_stale_temps(folder: str | os.PathLike, names) -> list[Path]:
    """Delete the temporary files that interrupted `atomic_write`s of `folder/<name>` left (for each of `names`);
    returns what was removed. Call it when a run starts, before anything writes there."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for name in names:
        for stale in folder.glob(f"{temp_prefix(Path(name))}*.tmp"):
            if stale.is_file():
                stale.unlink()
                removed.append(stale)
    return removed
