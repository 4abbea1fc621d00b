"""The build and its record: the version lives in one place, `deltaconv info` shows what `_C` contains, a `_C` built
against another torch is a backend reason (not an import error), and the build helpers find the target
environment's torch outside pip's isolated build environment. The fresh-venv `pip install .` checks are the CI
step .ci/install_check.sh."""

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest
import torch
from source_tree import ROOT, build_helpers

import deltaconv_kernels
from deltaconv_kernels import cli, ops
from deltaconv_kernels.ops import extension

CPU = ops.available_backends()["cpu"]
needs_build = pytest.mark.skipif(not CPU.available, reason=f"the cpu backend is unavailable: {CPU.reason}")


def test_version_lives_in_one_place():
    assert build_helpers.version(str(ROOT)) == deltaconv_kernels.__version__
    assert importlib.metadata.version("deltaconv_kernels") == deltaconv_kernels.__version__
    assert deltaconv_kernels.__version__ not in (ROOT / "setup.py").read_text()


@needs_build
def test_info_shows_the_build(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    info = extension.build_info()
    assert f"deltaconv_kernels {deltaconv_kernels.__version__}, torch {torch.__version__}" in out
    assert f"built against torch {info['torch']}" in out
    assert f"CPU kernels compiled for {', '.join(info['cpu_compiled'])}" in out
    assert f"running {extension.cpu_capability()}" in out
    cuda = f"compiled for {', '.join(info['cuda_archs'])}" if info["cuda"] else "not compiled"
    assert f"CUDA kernels {cuda}" in out
    assert info["torch"] == str(torch.__version__)


@needs_build
def test_torch_mismatch_is_a_backend_reason_not_an_import_error(tmp_path):
    """In a fresh process whose torch reports another version, importing the package works, _C is not loaded,
    and the cpu backend says why."""
    code = ("import sys, torch\n"
            "torch.__version__ = '0.0.1+other'\n"
            "import deltaconv_kernels\n"
            "print(repr(deltaconv_kernels.available_backends()['cpu']))\n"
            "sys.exit(3 if 'deltaconv_kernels._C' in sys.modules else 0)\n")
    res = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (f"unavailable: deltaconv_kernels._C was built against torch {extension.built_against()} "
            "but torch 0.0.1+other is running; rebuild it with `pip install .`") in res.stdout


@needs_build
def test_missing_or_broken_build_record_is_a_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(extension, "RECORD", tmp_path / "_C_build.json")
    assert "has no build record" in extension.problem.__wrapped__()
    (tmp_path / "_C_build.json").write_text("{not json")
    assert "is not a build record" in extension.problem.__wrapped__()
    (tmp_path / "_C_build.json").write_text(json.dumps({"torch": "1.0.0"}))
    assert "built against torch 1.0.0" in extension.problem.__wrapped__()


def test_isa_builds_follow_the_target():
    assert build_helpers.isa_builds(str(ROOT), "aarch64") == [("DEFAULT", [])]
    x86 = dict(build_helpers.isa_builds(str(ROOT), "x86_64"))
    assert list(x86) == ["DEFAULT", "AVX2", "AVX512", "AVX512BF16"]
    assert x86["DEFAULT"] == [] and {"-mavx2", "-mfma"} <= set(x86["AVX2"]) and "-mavx512f" in x86["AVX512"]
    assert {"-mavx512f", "-mavx512bf16"} <= set(x86["AVX512BF16"])


def test_target_sys_path_ignores_pip_isolation(monkeypatch, tmp_path):
    """pip's isolated build sets PYTHONPATH (its sitecustomize) and PYTHONNOUSERSITE; the target's own path and
    torch are found without them."""
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("PYTHONNOUSERSITE", "1")
    has_torch, path = build_helpers.target_sys_path(sys.executable)
    assert has_torch
    assert str(tmp_path) not in path
    assert os.path.dirname(os.path.dirname(torch.__file__)) in path


def test_no_torch_message_says_how_to_install_it():
    msg = build_helpers.no_torch_message("looked with /x/python")
    for part in ("pip install torch --index-url https://download.pytorch.org/whl/cpu", "a CUDA build",
                 "retry `pip install .`", "pip install --no-build-isolation .", "(looked with /x/python)"):
        assert part in msg
