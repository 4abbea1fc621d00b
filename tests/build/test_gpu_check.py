"""python/gpu_check.py runs once on a lent GPU with no second try to spare: its whole code path (conformance checks,
timing loop, report files) runs here on CPU in --smoke mode so that it cannot break unnoticed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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


def _start(out: Path, *extra):
    import os

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(ROOT / "python" / "gpu_check.py"), "--smoke", "--out", str(out),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_a_killed_run_leaves_its_report(tmp_path):
    """The lent GPU's call may be killed at its timeout: what was done before must be on disk."""
    import signal
    import time

    pytest.importorskip("triton")
    proc = _start(tmp_path)
    report_file = tmp_path / "gpu_check.json"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if report_file.exists():
                try:
                    done = json.loads(report_file.read_text())["conformance"]
                except ValueError:  # never: the file is replaced atomically
                    raise AssertionError("gpu_check.json was read half-written") from None
                if done:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, "gpu_check finished before it could be killed: " + proc.stdout.read()[-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    report = json.loads(report_file.read_text())
    assert report["finished"] is False and report["conformance"] and all(r["ok"] for r in report["conformance"])
    md = (tmp_path / "RESULTS_gpu.md").read_text()
    assert "(not finished)" in md and "Conformance:" in md


def test_budget_skips_what_cannot_finish_and_says_so(tmp_path):
    pytest.importorskip("triton")
    proc = _start(tmp_path, "--budget", "2")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["finished"] and report["budget_s"] == 2
    skipped = [r for r in report["conformance"] + report["timings"] if (r.get("error") or "").startswith("skipped")]
    assert skipped, "a 2 s budget ran everything"
    assert all(r["ok"] for r in report["conformance"] if r["ok"] is not None)


def test_compiler_errors_are_the_reported_build_failure():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "python" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    log = "\n".join(["running build_ext", "g++ -c kernels.cpp", "csrc/include/x.h:62: error: 'constinit' does not "
                     "name a type", "  62 | constinit const Kernels k", *[f"noise {i}" for i in range(50)],
                     "Traceback (most recent call last):", '  File "setup.py", line 1', "RuntimeError: boom"])
    errors = gpu_check.compiler_errors(log)
    assert any("'constinit' does not name a type" in line for line in errors)
    assert not any("Traceback" in line for line in errors)
