"""A shortened run of the locality proof (python/examples/locality): trains a toy teacher on skimage crops and a
source classifier, runs `deltaconv analyze` on the teacher, distils ΔConvBlocks and the LinFusion-style and
neighborhood baselines with one trainer, samples every variant from the same noise and writes the section."""

import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("skimage", reason="the locality proof crops scikit-image's bundled images")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python" / "examples" / "locality"))


def test_locality_proof_smoke(tmp_path):
    import run_locality

    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n## Locality proof\n\nstale\n\n## Later section\n\nkept\n")
    metrics = run_locality.run(tmp_path / "work", smoke=True, threads=1, plots=tmp_path / "plots",
                               results=results, command="run_locality.py --smoke")
    rows = {r["variant"]: r for r in metrics["rows"]}
    # teacher, 6 ΔConv students (2 K x 3 inits), LinFusion, neighborhood (trained, training-free), 3 undistilled
    # ΔConv (one per init), the static-mixing bound, attn1 = 0
    assert list(rows)[0] == run_locality.TEACHER_ROW and len(rows) == 15
    trained = [r for r in metrics["rows"] if r["trained"]]
    assert len(trained) == 8 and {r["variant"].split(" K=")[0] for r in trained} == {"ΔConv", "LinFusion-style",
                                                                                     "neighborhood"}
    steps = [0, run_locality.SMOKE["distill_steps"]]
    assert all(sorted(map(int, r["feature_rel_mse_by_step"])) == steps for r in trained)
    assert len(metrics["paired_psnr"]) == 6 and all(p["n"] == run_locality.SMOKE["samples"]
                                                    for p in metrics["paired_psnr"])
    inits = {label: rec["init"] for label, rec in metrics["init_records"].items()}
    assert sorted(inits.values()) == ["attention", "attention", "attention+fit", "attention+fit"]
    for r in metrics["rows"][1:]:
        assert math.isfinite(r["psnr_vs_teacher"]) and math.isfinite(r["frechet_to_real"])
        assert r["feature_rel_mse"] is not None and r["feature_rel_mse"] >= 0
    assert rows["attn1 = 0"]["feature_rel_mse"] == pytest.approx(1.0)  # zero output: the whole teacher signal
    for info in metrics["distill"].values():
        assert info["final"]["step"] == run_locality.SMOKE["distill_steps"]
    analysis = json.loads((tmp_path / "work" / "analysis" / "analysis.json").read_text())
    assert metrics["analysis"]["kernel_sizes"] == analysis["kernel_sizes"]
    assert all(v["hw"] == [16, 16] for v in metrics["analysis"]["layers"].values())
    text = results.read_text()
    assert text.count("## Locality proof") == 1 and "stale" not in text and "kept" in text
    assert text.rstrip().endswith("run_locality.py --smoke")  # the section is the last one
    assert "| attn1 = 0 |" in text and "locality_grid.png" in text and "init attention+fit" in text
    assert "best static mixing" in text and "Paired PSNR differences" in text
    for name in ("locality_grid.png", "locality_erf.png", "locality_mass.png", "locality_teacher_loss.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 0
