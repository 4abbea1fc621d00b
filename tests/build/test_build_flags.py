"""The build's language level and CUDA toolkit are decided by python/build_helpers.py, never left to torch's
defaults (which differ between torch releases: c++17 up to torch 2.12, c++20 from 2.13)."""

import os
import shutil
import stat

import pytest
from source_tree import ROOT, build_helpers


def _compile_args(monkeypatch, force_cuda: bool):
    monkeypatch.setenv("DELTACONV_FORCE_CUDA", "1" if force_cuda else "0")
    monkeypatch.delenv("DELTACONV_SKIP_EXT", raising=False)
    (ext,), _ = build_helpers.extensions(str(ROOT))
    return ext.extra_compile_args


def test_every_compiler_gets_the_standard(monkeypatch):
    args = _compile_args(monkeypatch, force_cuda=False)
    assert build_helpers.CXX_STD in args["cxx"]
    assert [a for a in args["cxx"] if a.startswith("-std=")] == [build_helpers.CXX_STD]


def test_nvcc_gets_the_standard_too(monkeypatch):
    import torch

    if torch.version.cuda is None or shutil.which("nvcc") is None:
        pytest.skip("needs a CUDA build of torch and nvcc to decide the CUDA sources")
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", cpp_extension.CUDA_HOME)
    monkeypatch.setenv("CUDA_HOME", os.environ.get("CUDA_HOME", ""))
    args = _compile_args(monkeypatch, force_cuda=True)
    assert [a for a in args["nvcc"] if a.startswith("-std=")] == [build_helpers.CXX_STD]


def test_no_gpu_and_no_arch_list_skips_cuda_with_the_reason(monkeypatch):
    import torch

    if torch.version.cuda is None or shutil.which("nvcc") is None or torch.cuda.is_available():
        pytest.skip("needs a CUDA build of torch and nvcc, and no visible GPU")
    from torch.utils import cpp_extension

    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.delenv("DELTACONV_FORCE_CUDA", raising=False)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", cpp_extension.CUDA_HOME)  # restored after the test
    monkeypatch.setenv("CUDA_HOME", os.environ.get("CUDA_HOME", ""))
    build_helpers.set_cuda_home()
    build, reason = build_helpers.cuda_decision(torch)
    assert not build and "TORCH_CUDA_ARCH_LIST" in reason
    monkeypatch.setenv("DELTACONV_FORCE_CUDA", "1")
    with pytest.raises(SystemExit, match="TORCH_CUDA_ARCH_LIST"):
        build_helpers.cuda_decision(torch)


def test_cuda_home_comes_from_the_toolkit_behind_a_wrapper(tmp_path, monkeypatch):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not installed")
    real_home = build_helpers.nvcc_toolkit(nvcc)
    assert real_home and os.path.isfile(os.path.join(real_home, "include", "cuda_runtime.h"))
    # A wrapper script outside the toolkit, as /usr/local/bin/nvcc is on some machines: torch alone would take
    # its parent folder as CUDA_HOME.
    wrapper_dir = tmp_path / "bin"
    wrapper_dir.mkdir()
    wrapper = wrapper_dir / "nvcc"
    wrapper.write_text(f"#!/bin/sh\nexec {os.path.join(real_home, 'bin', 'nvcc')} \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", f"{wrapper_dir}{os.pathsep}{os.environ['PATH']}")
    home, source = build_helpers.cuda_home()
    assert os.path.realpath(home) == os.path.realpath(real_home)
    assert str(wrapper) in source
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    assert build_helpers.cuda_home() == (str(tmp_path), "$CUDA_HOME")


def test_install_requires_names_the_oldest_tested_torch():
    text = (ROOT / "setup.py").read_text(encoding="utf-8")
    assert 'f"torch>={build_helpers.OLDEST_TORCH}"' in text
    assert build_helpers.OLDEST_TORCH == "2.11"
