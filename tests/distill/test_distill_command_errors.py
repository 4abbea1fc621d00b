"""`deltaconv distill` misuse is `deltaconv distill: error: ...` with exit code 2 and no traceback, checked before
any work; distillation runs are repeatable from --seed, never silently overwrite an earlier
run, resume only on the same data, and write files with the umask's mode, cleaning torn temporaries."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from cli_usage import distill_args, tiny_pixart_folder, usage_error

from deltaconv_kernels.cli import main

pytest.importorskip("diffusers")

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_pixart_folder(tmp_path_factory)


_distill = distill_args


# --- distill: argument errors -------------------------------------------------------------------------------

def _latents_file(path, channels=4, width=32):
    torch.save({"latents": torch.randn(2, channels, 16, 16), "prompt_embeds": torch.randn(2, 3, width)}, path)
    return path


DISTILL_CASES = {
    "fp16 on cpu": (lambda t: ["--mixed-precision", "fp16"], "--mixed-precision fp16 needs a CUDA GPU"),
    "random-size 0": (lambda t: ["--random-size", "0", "0"], "--random-size sides must be >= 1"),
    "threads -1": (lambda t: ["--threads", "-1"], "--threads must be >= 1"),
    "random 0": (lambda t: ["--random", "0"], "--random must be >= 1"),
    "resume garbage": (lambda t: ["--resume", str(t / "garbage.pt")], "not a readable deltaconv distill checkpoint"),
    "resume and overwrite": (lambda t: ["--resume", "--overwrite"], "contradict"),
}


@pytest.fixture
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # mixed precision is process-wide state
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("case", list(DISTILL_CASES))
def test_distill_misuse(model_dir, tmp_path, capsys, case, fresh_accelerate_state):
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    extra, match = DISTILL_CASES[case]
    usage_error(capsys, _distill(model_dir, tmp_path / "out", *extra(tmp_path)), match)


@NO_CUDA
def test_distill_backend_without_gpu(model_dir, tmp_path, capsys, monkeypatch):
    usage_error(capsys, _distill(model_dir, tmp_path / "out", "--backend", "cuda"), "backend 'cuda'")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # outside the interpreter Triton needs a GPU
    usage_error(capsys, _distill(model_dir, tmp_path / "out", "--backend", "triton"), "backend 'triton'")


def test_distill_output_dir_is_a_file(model_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    usage_error(capsys, _distill(model_dir, tmp_path / "file"), "is a file, not a folder")


@pytest.mark.parametrize("channels,width,match", [(3, 32, "latents have 3 channels"),
                                                  (4, 7, "prompt embeddings are 7 wide")])
def test_distill_data_that_does_not_fit(model_dir, tmp_path, capsys, channels, width, match):
    data = _latents_file(tmp_path / "data.pt", channels, width)
    argv = ["distill", "--model", str(model_dir), "--latents", str(data), "--kernel-sizes", "3", "--output-dir",
            str(tmp_path / "out"), "--max-steps", "1", "--no-progress", "--no-plot"]
    usage_error(capsys, argv, match)


def test_distill_images_without_vae(model_dir, tmp_path, capsys):
    argv = ["distill", "--model", str(model_dir), "--images", str(tmp_path), "--text-encoder", "m:f",
            "--output-dir", str(tmp_path / "out")]
    usage_error(capsys, argv, "--images needs a VAE")


# --- distillation runs: seed, overwrite, resume, modes -----------------------------------------------------------

def _weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "deltaconv" / "deltaconv.safetensors"))


def _history(out):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((out / "history.json").read_text())]


def test_two_identical_commands_are_bit_identical(model_dir, tmp_path, capsys):
    torch.manual_seed(123)  # whatever the global RNG holds before: --seed decides
    assert main(_distill(model_dir, tmp_path / "a", "--seed", "5")) == 0
    torch.rand(17)
    assert main(_distill(model_dir, tmp_path / "b", "--seed", "5")) == 0
    assert _history(tmp_path / "a") == _history(tmp_path / "b")
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert main(_distill(model_dir, tmp_path / "c", "--seed", "6")) == 0
    assert _history(tmp_path / "c") != _history(tmp_path / "a")


def test_rerun_into_an_earlier_run_is_refused_unless_asked(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_distill(model_dir, out)) == 0
    before = (out / "history.csv").read_text(), (out / "checkpoint.pt").read_bytes()
    usage_error(capsys, _distill(model_dir, out), "--resume")
    assert ((out / "history.csv").read_text(), (out / "checkpoint.pt").read_bytes()) == before
    assert main(_distill(model_dir, out, "--overwrite", steps=1)) == 0
    assert [r["step"] for r in _history(out)] == [1]


def test_resume_refuses_other_data(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_distill(model_dir, out)) == 0
    argv = _distill(model_dir, out, "--resume", steps=3)
    argv[argv.index("--random-size") + 1:argv.index("--random-size") + 3] = ["16", "12"]
    usage_error(capsys, argv, "data: checkpoint")
    argv = _distill(model_dir, out, "--resume", steps=3)
    argv[argv.index("--random") + 1] = "6"
    usage_error(capsys, argv, "data: checkpoint")
    assert main(_distill(model_dir, out, "--resume", steps=3)) == 0  # the same data resumes


def test_trainer_refuses_an_earlier_run_without_overwrite(tmp_path):
    from test_distill_trainer import _model, _trainer

    _trainer(tmp_path, _model(), 1).train()
    with pytest.raises(ValueError, match="already holds a run"):
        _trainer(tmp_path, _model(), 1).train()


def test_distill_files_follow_the_umask_and_torn_temps_are_cleaned(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".checkpoint.pt.k1ll3d.tmp").write_bytes(b"torn by kill -9")
    (out / ".history.json.k1ll3d.tmp").write_bytes(b"torn")
    old = os.umask(0o022)
    try:
        assert main(_distill(model_dir, out, "--log-every", "1")) == 0
    finally:
        os.umask(old)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    for path in (out / "checkpoint.pt", out / "history.json", out / "history.csv",
                 out / "deltaconv" / "deltaconv.safetensors", out / "deltaconv" / "deltaconv.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
