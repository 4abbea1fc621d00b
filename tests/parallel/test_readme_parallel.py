"""The README section "Running one image on several GPUs": its torchrun command runs as written (2 gloo
processes on CPU) and reports a band-parallel image equal to the one-process image; the Python snippet uses only
names the package exports."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import deltaconv_kernels

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from source_tree import ROOT as REPO_ROOT  # noqa: E402

SECTION = "## Running one image on several GPUs"


def _section() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:end if end >= 0 else len(text)]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", _section(), flags=re.S)


def test_torchrun_command_runs_as_written():
    [command] = [line for block in _blocks("bash") for line in block.splitlines() if line.startswith("torchrun")]
    argv = shlex.split(command)
    # `torchrun` is the console script of torch.distributed.run: the same entry point, with this interpreter.
    argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(deltaconv_kernels.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=env, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "equal within the fp32 tolerance" in done.stdout, done.stdout


def test_python_snippet_names_exist():
    [snippet] = _blocks("python")
    import deltaconv_kernels.integrations.diffusers as dd
    import deltaconv_kernels.parallel as parallel
    for name in re.findall(r"dd\.(\w+)", snippet):
        assert hasattr(dd, name), name
    for name in re.findall(r"from deltaconv_kernels\.parallel import (.+)", snippet)[0].split(","):
        assert hasattr(parallel, name.strip()), name
    compile(snippet, "README snippet", "exec")
