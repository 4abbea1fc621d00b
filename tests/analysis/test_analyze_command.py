"""`deltaconv analyze` misuse is `deltaconv analyze: error: ...` with exit code 2, no traceback, checked before a
model is loaded or a file written."""

from __future__ import annotations

import pytest
import torch
from cli_usage import usage_error

pytest.importorskip("diffusers")

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")

ANALYZE_CASES = {
    "missing model": (lambda t: ["--model", str(t / "missing")], "does not exist"),
    "batch 0": (lambda t: ["--tiny", "pixart", "--batch-size", "0"], "--batch-size must be >= 1"),
    "k-min 4": (lambda t: ["--tiny", "pixart", "--k-min", "4"], "k_min must be a positive odd int"),
    "threshold 2": (lambda t: ["--tiny", "pixart", "--threshold", "2"], "threshold must lie in (0, 1]"),
    "missing inputs": (lambda t: ["--tiny", "pixart", "--inputs", str(t / "none.pt")], "does not exist"),
    "timesteps 5000": (lambda t: ["--tiny", "pixart", "--timesteps", "5000"], "--timesteps must lie in [0, 999]"),
    "device foo": (lambda t: ["--tiny", "pixart", "--device", "foo"], "--device must be cpu or cuda"),
    "dtype fp8": (lambda t: ["--tiny", "pixart", "--dtype", "fp8"], "--dtype must be one of fp32|fp16|bf16|float32"),
    "out is a file": (lambda t: ["--tiny", "pixart", "--out", str(t / "file")], "is a file, not a folder"),
}


@pytest.mark.parametrize("case", list(ANALYZE_CASES))
def test_analyze_misuse(tmp_path, capsys, case):
    (tmp_path / "file").write_text("x")
    extra, match = ANALYZE_CASES[case]
    usage_error(capsys, ["analyze", "--no-progress", "--no-plots", *extra(tmp_path)], match)
    assert (tmp_path / "file").read_text() == "x"


@NO_CUDA
def test_analyze_cuda_without_gpu(capsys):
    usage_error(capsys, ["analyze", "--tiny", "pixart", "--device", "cuda"], "no CUDA GPU is available")
