"""`deltaconv bench`: the layer grid from the command line writes bench.json, bench.md and latency.png, merges
fresh processes, takes any resolution, and refuses bad options with `deltaconv bench: error:` and exit 2."""

from __future__ import annotations

import json

import pytest
from bench_fakes import SCHEMA

from deltaconv_kernels.cli import main


def test_cli_grid_writes_the_schema(tmp_path, capsys):
    rc = main(["bench", "--device", "cpu", "--max-resolution", "512", "--methods", "deltaconv,sdpa",
                   "--models", "sdxl", "--out", str(tmp_path), "--time-budget", "120"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Measured latency per call" in out and "Extrapolated" in out
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {r["method"] for r in data["records"]} == {"deltaconv", "sdpa"}
    for r in data["records"]:
        assert SCHEMA <= set(r) and r["batch"] == 2 and r["rounds"] == 5 and r["seconds_median"] > 0
    assert data["speedups"][0]["over"] == "sdpa" and (tmp_path / "latency.png").exists()


def test_cli_processes_merge_fresh_runs(tmp_path):
    pytest.importorskip("tqdm", reason="the bench's worker processes show progress with tqdm")
    rc = main(["bench", "--device", "cpu", "--max-resolution", "512", "--methods", "deltaconv",
                   "--models", "sdxl", "--out", str(tmp_path), "--processes", "2"])
    assert rc == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    (r,) = data["records"]
    assert r["processes"] == 2 and len(r["extra"]["process_medians"]) == 2 and data["environment"]["processes"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--methods", "flash"], "--methods must be"),
    (["--rounds", "3"], "--rounds must be >= 5"),
    (["--processes", "0"], "--processes must be >= 1"),
    (["--max-resolution", "3K"], "a resolution is one of"),
    (["--min-resolution", "4K", "--max-resolution", "1K"], "is above --max-resolution"),
])
def test_cli_rejects_bad_options(tmp_path, capsys, argv, message):
    assert main(["bench", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "deltaconv bench: error:" in err and message in err
