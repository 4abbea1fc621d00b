"""The one JSON reader/writer of both benchmarks (bench/records.py): every file in benchmarks/ (layer-grid files
name their records "results", the end-to-end file "records") reads into the one `Record` schema, and what is written
reads back unchanged."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from bench_fakes import fake, planner

from deltaconv_kernels.bench.records import BenchData, environment, read_json, write_json

FILES = sorted((Path(__file__).resolve().parents[2] / "benchmarks").glob("*.json"))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_stored_file_reads(path):
    data = read_json(path)
    assert data.records and {"device", "dtype", "batch"} <= set(data.environment)
    assert all(r.unstable == "" for r in data.records)  # written before the flag existed: nothing claimed


def test_files_were_found():
    assert {"end_to_end_cpu.json", "bench_cpu_fp32.json"} <= {p.name for p in FILES}


def test_round_trip(tmp_path):
    p = planner()
    fake(p, "deltaconv", "sd15", "512", 0.1, unstable="IQR 40% of the median (> 25%)")
    data = BenchData(environment(p.cfg), p.records, [{"over": "sdpa", "unstable": ""}], "deltaconv bench --x")
    write_json(tmp_path / "b.json", data)
    back = read_json(tmp_path / "b.json")
    assert back == data and dataclasses.asdict(back.records[0])["unstable"].startswith("IQR 40%")
    assert len(back.environment["load_avg"]) == 3 and back.environment["cpu_count"] >= 1
