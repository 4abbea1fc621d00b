"""The argument checks and parsers the subcommands share (cli/args.py): one dtype parser for both spellings,
named and spelled resolutions, comma lists, devices and output folders; each error names the option."""

from __future__ import annotations

import pytest
import torch

from deltaconv_kernels.cli import args as cli_args
from deltaconv_kernels.dtypes import DTYPES, dtype_name


@pytest.mark.parametrize("ours, torchs", [("fp32", "float32"), ("fp16", "float16"), ("bf16", "bfloat16")])
def test_dtype_both_spellings(ours, torchs):
    parse = cli_args.parse_dtype
    assert parse(ours) is parse(torchs) is parse(torchs.upper()) is DTYPES[ours]
    assert dtype_name(cli_args.parse_dtype(torchs)) == ours


def test_dtype_errors_name_the_option():
    with pytest.raises(ValueError, match=r"--mixed must be one of fp32\|fp16\|bf16\|float32\|float16\|bfloat16, "
                                         r"got 'fp8'"):
        cli_args.parse_dtype("fp8", "--mixed")
    with pytest.raises(ValueError, match="dtype must be one of"):
        dtype_name(torch.float64)


@pytest.mark.parametrize("text, label, size", [
    ("2k", "2K", (2048, 2048)), ("768", "768", (768, 768)), ("1024x768", "1024x768", (1024, 768)),
    ("1024", "1K", (1024, 1024)), ("3840x2160", "4K", (3840, 2160)), ("QHD", "QHD", (2560, 1440)),
])
def test_resolutions(text, label, size):
    r = cli_args.parse_resolution(text, "--max-resolution")
    assert (r.label, (r.height, r.width)) == (label, size)


@pytest.mark.parametrize("text", ["3K", "0", "1024x", "x768", "1024x0", "-5", "1024x768x2", "12.5", ""])
def test_bad_resolution_names_the_option(text):
    with pytest.raises(ValueError, match="--max-resolution: a resolution is one of"):
        cli_args.parse_resolution(text, "--max-resolution")


def test_lists():
    assert cli_args.split_list(" a, b ,,", "--x") == ["a", "b"]
    assert cli_args.split_choices("a,b", ("a", "b", "c"), "--x") == ["a", "b"]
    with pytest.raises(ValueError, match="--x must be a non-empty"):
        cli_args.split_list(" , ", "--x")
    with pytest.raises(ValueError, match=r"--x must be a comma-separated subset of \('a',\)"):
        cli_args.split_choices("a,z", ("a",), "--x")


def test_checks(tmp_path):
    assert cli_args.check_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="--device must be cpu or cuda"):
        cli_args.check_device("tpu")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="--out .* is a file, not a folder"):
        cli_args.check_output_dir(tmp_path / "file" / "sub", "--out")
    assert cli_args.check_output_dir(tmp_path / "new", "--out") == tmp_path / "new"
    assert cli_args.check_at_least(None, 1, "--n") is None and cli_args.check_positive(0.5, "--t") == 0.5
    with pytest.raises(ValueError, match="--n must be >= 1, got 0"):
        cli_args.check_at_least(0, 1, "--n")
    with pytest.raises(ValueError, match="--t must be > 0, got 0"):
        cli_args.check_positive(0, "--t")
