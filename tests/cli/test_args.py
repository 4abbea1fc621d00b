"""The argument checks and parsers the subcommands share (cli/args.py): one dtype parser for both spellings,
named and spelled resolutions, comma lists, devices and output folders; each error names the option."""

from __future__ import annotations

import pytest
import torch

from deltaconv_kernels.cli.args import (
    check_at_least,
    check_device,
    check_output_dir,
    check_positive,
    parse_dtype,
    parse_resolution,
    split_choices,
    split_list,
)
from deltaconv_kernels.dtypes import DTYPES, dtype_name


@pytest.mark.parametrize("ours, torchs", [("fp32", "float32"), ("fp16", "float16"), ("bf16", "bfloat16")])
def test_dtype_both_spellings(ours, torchs):
    assert parse_dtype(ours) is parse_dtype(torchs) is parse_dtype(torchs.upper()) is DTYPES[ours]
    assert dtype_name(parse_dtype(torchs)) == ours


def test_dtype_errors_name_the_option():
    with pytest.raises(ValueError, match=r"--mixed must be one of fp32\|fp16\|bf16\|float32\|float16\|bfloat16, "
                                         r"got 'fp8'"):
        parse_dtype("fp8", "--mixed")
    with pytest.raises(ValueError, match="dtype must be one of"):
        dtype_name(torch.float64)


@pytest.mark.parametrize("text, label, size", [
    ("2k", "2K", (2048, 2048)), ("768", "768", (768, 768)), ("1024x768", "1024x768", (1024, 768)),
    ("1024", "1K", (1024, 1024)), ("3840x2160", "4K", (3840, 2160)), ("QHD", "QHD", (2560, 1440)),
])
def test_resolutions(text, label, size):
    r = parse_resolution(text, "--max-resolution")
    assert (r.label, (r.height, r.width)) == (label, size)


@pytest.mark.parametrize("text", ["3K", "0", "1024x", "x768", "1024x0", "-5", "1024x768x2", "12.5", ""])
def test_bad_resolution_names_the_option(text):
    with pytest.raises(ValueError, match="--max-resolution: a resolution is one of"):
        parse_resolution(text, "--max-resolution")


def test_lists():
    assert split_list(" a, b ,,", "--x") == ["a", "b"]
    assert split_choices("a,b", ("a", "b", "c"), "--x") == ["a", "b"]
    with pytest.raises(ValueError, match="--x must be a non-empty"):
        split_list(" , ", "--x")
    with pytest.raises(ValueError, match=r"--x must be a comma-separated subset of \('a',\)"):
        split_choices("a,z", ("a",), "--x")


def test_checks(tmp_path):
    assert check_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="--device must be cpu or cuda"):
        check_device("tpu")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="--out .* is a file, not a folder"):
        check_output_dir(tmp_path / "file" / "sub", "--out")
    assert check_output_dir(tmp_path / "new", "--out") == tmp_path / "new"
    assert check_at_least(None, 1, "--n") is None and check_positive(0.5, "--t") == 0.5
    with pytest.raises(ValueError, match="--n must be >= 1, got 0"):
        check_at_least(0, 1, "--n")
    with pytest.raises(ValueError, match="--t must be > 0, got 0"):
        check_positive(0, "--t")
