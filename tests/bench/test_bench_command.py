"""`deltaconv bench`: the layer grid from the command line writes bench.json, bench.md and latency.png to its
folder (results before the plot), merges fresh processes, takes any resolution (named, `N`, `HxW`) with the same
checks, and refuses bad options with `deltaconv bench: error:` and exit 2 before anything runs."""

from __future__ import annotations

import json

import pytest
import torch
from bench_fakes import SCHEMA
from cli_usage import usage_error

from deltaconv_kernels.bench import cli as bench_cli
from deltaconv_kernels.cli import main

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")


def test_grid_writes_json_markdown_and_plot(tmp_path, capsys):
    rc = main(["bench", "--device", "cpu", "--max-resolution", "512", "--methods", "deltaconv,sdpa",
               "--models", "sdxl", "--out", str(tmp_path), "--time-budget", "120"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Measured latency per call" in out and "Extrapolated" in out and str(tmp_path.resolve()) in out
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {r["method"] for r in data["records"]} == {"deltaconv", "sdpa"}
    for r in data["records"]:
        assert SCHEMA <= set(r) and r["batch"] == 2 and r["rounds"] == 5 and r["seconds_median"] > 0
    assert data["speedups"][0]["over"] == "sdpa" and "unstable" in data["speedups"][0]
    assert len(data["environment"]["load_avg"]) == 3
    md = (tmp_path / "bench.md").read_text()
    assert "**Measured latency per layer call, ms**" in md and "load average" in md
    assert (tmp_path / "latency.png").exists()


def test_results_are_written_before_the_plot_can_fail(tmp_path, capsys, monkeypatch):
    def no_matplotlib(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'matplotlib'")

    monkeypatch.setattr(bench_cli, "plot", no_matplotlib)
    usage_error(capsys, ["bench", "--device", "cpu", "--max-resolution", "512", "--methods", "deltaconv", "--models",
                         "sdxl", "--out", str(tmp_path)], "the plot needs matplotlib")
    assert json.loads((tmp_path / "bench.json").read_text())["records"] and (tmp_path / "bench.md").exists()


def test_any_resolution(tmp_path):
    rc = main(["bench", "--device", "cpu", "--resolutions", "256,384x192", "--methods", "deltaconv",
               "--models", "sd15", "--out", str(tmp_path)])
    assert rc == 0
    records = json.loads((tmp_path / "bench.json").read_text())["records"]
    assert [(r["resolution"], r["height"], r["width"]) for r in records] == [("256", 256, 256),
                                                                              ("384x192", 384, 192)]
    rc = main(["bench", "--device", "cpu", "--min-resolution", "256", "--max-resolution", "512", "--methods",
               "deltaconv", "--models", "sd15", "--out", str(tmp_path)])
    assert rc == 0  # the grid's 512 and the spelled 256
    assert [r["resolution"] for r in json.loads((tmp_path / "bench.json").read_text())["records"]] == ["256", "512"]


def test_processes_merge_fresh_runs(tmp_path):
    rc = main(["bench", "--device", "cpu", "--max-resolution", "512", "--methods", "deltaconv",
               "--models", "sdxl", "--out", str(tmp_path), "--processes", "2"])
    assert rc == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    (r,) = data["records"]
    assert r["processes"] == 2 and len(r["extra"]["process_medians"]) == 2 and data["environment"]["processes"] == 2


BENCH_CASES = {
    "device foo": (["--device", "foo"], "--device must be cpu or cuda"),
    "resolution 3K": (["--max-resolution", "3K"], "--max-resolution: a resolution is one of"),
    "resolution 0": (["--max-resolution", "0"], "--max-resolution: a resolution is one of"),
    "resolution 1024x": (["--max-resolution", "1024x"], "--max-resolution: a resolution is one of"),
    "resolution 2x2x2": (["--resolutions", "512,2x2x2"], "--resolutions: a resolution is one of"),
    "no token": (["--resolutions", "8", "--models", "pixart"], "--resolutions: an image of 8x8 px has no pixart"),
    "no token min": (["--min-resolution", "4", "--models", "sd15"], "--min-resolution: an image of 4x4 px has no"),
    "empty list": (["--resolutions", ","], "--resolutions must be a non-empty"),
    "min above max": (["--min-resolution", "4K", "--max-resolution", "1K"], "is above --max-resolution"),
    "batch 0": (["--batch", "0"], "--batch must be >= 1"),
    "budget -1": (["--time-budget", "-1"], "--time-budget must be > 0"),
    "unknown method": (["--methods", "flash"], "--methods must be"),
    "rounds 3": (["--rounds", "3"], "--rounds must be >= 5"),
    "processes 0": (["--processes", "0"], "--processes must be >= 1"),
    "dtype fp8": (["--dtype", "fp8"], "--dtype must be one of fp32|fp16|bf16|float32|float16|bfloat16"),
}


@pytest.mark.parametrize("case", list(BENCH_CASES))
def test_bench_misuse(tmp_path, capsys, case):
    extra, match = BENCH_CASES[case]
    usage_error(capsys, ["bench", "--device", "cpu", "--out", str(tmp_path / "b"), *extra], match)
    assert not (tmp_path / "b").exists()


def test_both_dtype_spellings(tmp_path):
    for spelling in ("bf16", "bfloat16"):
        out = tmp_path / spelling
        assert main(["bench", "--device", "cpu", "--dtype", spelling, "--max-resolution", "512", "--methods",
                     "deltaconv", "--models", "sd15", "--out", str(out)]) == 0
        assert json.loads((out / "bench.json").read_text())["environment"]["dtype"] == "bf16"


def test_bench_out_is_a_file_is_refused_before_the_run(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    usage_error(capsys, ["bench", "--device", "cpu", "--methods", "deltaconv", "--max-resolution", "512",
                         "--out", str(tmp_path / "file")], "is a file, not a folder")
    assert "deltaconv-" not in capsys.readouterr().err  # no case ran


@NO_CUDA
def test_bench_cuda_without_gpu(tmp_path, capsys):
    usage_error(capsys, ["bench", "--device", "cuda", "--out", str(tmp_path)], "no CUDA GPU is available")
