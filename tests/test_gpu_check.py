"""python/gpu_check.py runs once on a lent GPU with no second try to spare: its whole code path (conformance checks,
timing loop, report files) runs here on CPU in --smoke mode so that it cannot break unnoticed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_writes_its_report(tmp_path):
    pytest.importorskip("triton")
    res = subprocess.run([sys.executable, str(ROOT / "python" / "gpu_check.py"), "--smoke", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["conformance"] and all(r["ok"] for r in report["conformance"])
    methods = {r["method"] for r in report["timings"] if r["us"] is not None}
    assert {"block triton", "torch eager", "SDPA layer"} <= methods
    assert "| smoke | fwd+bwd |" in (tmp_path / "RESULTS_gpu.md").read_text()


def test_gpu_check_refuses_a_file_as_output(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    res = subprocess.run([sys.executable, str(ROOT / "python" / "gpu_check.py"), "--smoke", "--out", str(target)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr
