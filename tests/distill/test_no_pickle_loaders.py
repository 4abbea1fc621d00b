"""No code runs from a file the user only meant to load: the distill checkpoint is safetensors + JSON
and loading it never unpickles; `deltaconv distill --resume` refuses an old pickled checkpoint unless
--trust-checkpoint, and `load_encoder` refuses a whole pickled module unless trust_pickle=True."""

from __future__ import annotations

import builtins
import json
import math
import random

import numpy as np
import pytest
import torch
from cli_usage import distill_args, tiny_pixart_folder, usage_error
from torch import nn

from deltaconv_kernels.cli import main
from deltaconv_kernels.distill import checkpointing
from deltaconv_kernels.distill import evaluation as ev

# The CLI run, its tiny saved model and the exit-2 check are the CLI hardening tests' own.
_distill, _usage_error = distill_args, usage_error


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_pixart_folder(tmp_path_factory)


class _CreatesMarker:
    """Unpickling this calls `open(marker, "w")`: a stand-in for any code a crafted file could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def _crafted_pt(path, marker):
    torch.save({"format_version": 1, "payload": _CreatesMarker(marker)}, path)
    assert not marker.exists()  # saving runs nothing; only unpickling would
    return path


def test_the_marker_would_appear_if_unpickled(tmp_path):
    """The check below can fail: a trusting load of the crafted file does create the marker."""
    marker = tmp_path / "ran"
    torch.load(_crafted_pt(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


def test_resume_refuses_a_crafted_pickle(model_dir, tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = _crafted_pt(tmp_path / "evil.pt", marker)
    _usage_error(capsys, _distill(model_dir, tmp_path / "run", "--resume", str(evil)), "--trust-checkpoint")
    assert not marker.exists()


def test_old_checkpoint_resumes_only_when_trusted(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_distill(model_dir, out)) == 0
    state = checkpointing.load_checkpoint(out)
    torch.save({**state, "format_version": 1}, out / checkpointing.CHECKPOINT_NAME)  # the old pickled format
    _usage_error(capsys, _distill(model_dir, out, "--resume", steps=3), "old-format (pickled) checkpoint")
    assert main(_distill(model_dir, out, "--resume", "--trust-checkpoint", steps=3)) == 0
    assert [r["step"] for r in json.loads((out / "history.json").read_text())] == [1, 2, 3]
    assert checkpointing.load_checkpoint(out)["step"] == 3  # rewritten in the safe format


def test_checkpoint_round_trip_is_exact(tmp_path):
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    opt_state = {"state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.randn(3, 2)}},
                 "param_groups": [{"lr": 0.1 / 3, "betas": (0.9, 0.999), "params": [0]}]}
    w = torch.randn(4, 4)
    path = checkpointing.save_checkpoint(
        tmp_path / "c.pt", step=2, trainable={"a.weight": w, "a.view": w[1:3]}, optimizer_state=opt_state,
        lr_scheduler_state={"last_epoch": 2, "_last_lr": [0.1]}, scaler_state=None,
        config={"seed": 0, "data": {"sizes": [[16, 16]]}}, history=[{"step": 1, "grad_norm": float("nan")}])
    want = (torch.rand(3), np.random.rand(3), random.random())
    with open(path, "rb") as f:
        assert f.read(2) != b"PK"  # not a torch.save zip
    state = checkpointing.load_checkpoint(path)
    assert state["step"] == 2 and state["scaler"] is None and state["config"]["data"] == {"sizes": [[16, 16]]}
    assert torch.equal(state["trainable"]["a.weight"], w) and torch.equal(state["trainable"]["a.view"], w[1:3])
    assert torch.equal(state["optimizer"]["state"][0]["exp_avg"], opt_state["state"][0]["exp_avg"])
    assert state["optimizer"]["param_groups"] == opt_state["param_groups"]  # int keys, tuples, exact floats
    assert math.isnan(state["history"][0]["grad_norm"])
    checkpointing.set_rng_state(state["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_load_encoder_refuses_a_pickled_module_unless_trusted(tmp_path):
    marker = tmp_path / "ran"
    evil = _crafted_pt(tmp_path / "evil.pt", marker)
    with pytest.raises(ValueError, match=r"TorchScript.*\.pt2.*\.safetensors.*trust_pickle=True"):
        ev.load_encoder(evil)
    with pytest.raises(ValueError, match="not a safe encoder file"):
        ev.load_encoder(evil, module=nn.Linear(4, 3))
    assert not marker.exists()
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
    torch.save(enc, tmp_path / "module.pt")
    with pytest.raises(ValueError, match="trust_pickle=True"):
        ev.load_encoder(tmp_path / "module.pt")
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.equal(ev.load_encoder(tmp_path / "module.pt", trust_pickle=True)(x), enc(x))
