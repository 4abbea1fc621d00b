"""A shortened run of the digits proof (python/examples/digits): trains a toy teacher and classifier, converts,
distils, samples every variant from the same noise and writes the table, grid and metrics."""

import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn", reason="the digits proof needs scikit-learn's load_digits")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python" / "examples" / "digits"))


def test_digits_proof_smoke(tmp_path):
    import run_proof

    metrics = run_proof.run(tmp_path / "work", smoke=True, threads=2, results=tmp_path / "RESULTS.md",
                            grid=tmp_path / "grid.png")
    names = [r["variant"] for r in metrics["rows"]]
    assert len(names) == 4 and names[0].startswith("teacher")
    for row in metrics["rows"][1:]:
        assert math.isfinite(row["psnr_vs_teacher"]) and math.isfinite(row["frechet_to_real"])
    assert metrics["distill_final"]["step"] == run_proof.SMOKE["distill_steps"]
    table = (tmp_path / "RESULTS.md").read_text()
    assert "| distilled ΔConv student |" in table and "grid.png" in table
    assert (tmp_path / "grid.png").stat().st_size > 0
    saved = json.loads((tmp_path / "work" / "metrics.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(metrics["rows"]))
