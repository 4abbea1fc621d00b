"""The locality proof's teacher cached in the repository (python/examples/locality/cached_teacher.pt) is the one
its documented settings train: its key matches the configuration those settings give, its weights load into the
teacher architecture, and `get_teacher` reuses it instead of training."""

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("skimage", reason="the locality proof crops scikit-image's bundled images")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python" / "examples" / "locality"))


def test_cached_teacher_matches_its_configuration(tmp_path):
    import run_locality

    cfg = run_locality.configure(False, list(run_locality.CACHED_TEACHER_SETTINGS))
    state = torch.load(run_locality.CACHED_TEACHER, map_location="cpu", weights_only=True)
    assert state["key"] == run_locality.teacher_key(cfg)
    assert state["info"]["steps"] == cfg["teacher_steps"]  # trained to the end, not cut by the time budget
    messages = []
    model, embed, info = run_locality.get_teacher(tmp_path, None, None, cfg, messages.append)
    assert info["reused"] and "cached in the repository" in messages[0]
    for name, value in state["model"].items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0)
    assert run_locality.teacher_key(run_locality.FULL) != state["key"]  # the full run trains its own
