"""deltaconv_kernels.fileio: the one atomic write (used by the checkpoint writers of the integration and of the
distillation) and the clean-up of the temporary files a killed write leaves."""

from __future__ import annotations

import os
import stat

from deltaconv_kernels import fileio


def test_atomic_write_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        fileio.atomic_write(tmp_path / "a", lambda f: f.write(b"x"))
        os.umask(0o027)
        fileio.atomic_write(tmp_path / "b", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o640
    assert (tmp_path / "a").read_bytes() == b"x" and sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_one_atomic_write_helper():
    from deltaconv_kernels.distill import checkpointing
    from deltaconv_kernels.integrations.diffusers import saving

    assert checkpointing.atomic_write is fileio.atomic_write
    assert saving.atomic_write is fileio.atomic_write
    assert not hasattr(saving, "_atomic_write")


def test_remove_stale_temps(tmp_path):
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"torn")
    (tmp_path / ".history.csv.x.tmp").write_bytes(b"torn")
    (tmp_path / ".other.txt.x.tmp").write_bytes(b"not ours")
    (tmp_path / "checkpoint.pt").write_bytes(b"kept")
    removed = fileio.remove_stale_temps(tmp_path, ["checkpoint.pt", "history.csv"])
    assert sorted(p.name for p in removed) == [".checkpoint.pt.abc123.tmp", ".history.csv.x.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.txt.x.tmp", "checkpoint.pt"]
