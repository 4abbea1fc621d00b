"""python/dev.sh, setup.py and the README agree with the dependency table and on the oldest supported Python."""

from __future__ import annotations

import os
import re
import subprocess

from source_tree import ROOT

from deltaconv_kernels import extras

DEV_SH = ROOT / "python" / "dev.sh"


def test_python_floor_is_the_same_in_setup_and_dev_sh():
    floor = re.search(r'python_requires=">=(\d+)\.(\d+)"', (ROOT / "setup.py").read_text()).groups()
    assert f"sys.version_info >= ({floor[0]}, {floor[1]})" in DEV_SH.read_text()


def test_dev_sh_reads_the_table_instead_of_listing_packages():
    text = DEV_SH.read_text()
    assert "deltaconv_kernels/extras.py" in text
    for name in {extras.pip_name(r) for r in extras.EXTRAS["all"]} - {"pytest"} | {"ruff"}:  # it runs pytest
        assert not re.search(rf"\b{re.escape(name)}\b", text), f"dev.sh names {name}: it must come from extras.py"


def test_readme_lists_every_extra():
    readme = (ROOT / "README.md").read_text()
    for extra in extras.EXTRAS:
        assert f"`[{extra}]`" in readme, extra


def _dev_sh(tmp_path, *args, python):
    env = {**os.environ, "PYTHON": str(python), "DELTACONV_VENV": str(tmp_path / "venv")}
    return subprocess.run(["bash", str(DEV_SH), *args], env=env, capture_output=True, text=True, timeout=60)


def test_dev_sh_refuses_an_old_python_before_making_anything(tmp_path):
    old = tmp_path / "python3.10"
    old.write_text('#!/bin/sh\ncase "$2" in *version_info*) exit 1;; *python_version*) echo 3.10.14;; esac\n')
    old.chmod(0o755)
    run = _dev_sh(tmp_path, "test", python=old)
    assert run.returncode == 2, run.stderr
    assert "is Python 3.10.14; deltaconv_kernels needs Python >= 3.11" in run.stderr
    assert not (tmp_path / "venv").exists()


def test_dev_sh_usage(tmp_path):
    run = _dev_sh(tmp_path, "lint", python="python3")
    assert run.returncode == 2 and "usage: bash python/dev.sh bench|test" in run.stderr
