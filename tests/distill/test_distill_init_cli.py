"""`deltaconv distill --init attention+fit`: the blocks start from the attention, calibrated on the training data
(docs/DESIGN.md §10), the choice and the per-layer record reach deltaconv.json; a bad --init is a CLI error."""

import json

from deltaconv_kernels.cli import main


def test_distill_from_the_attention_init(tmp_path, capsys):
    from tiny_models import tiny_pixart

    model = tmp_path / "model"
    tiny_pixart().save_pretrained(model)
    out = tmp_path / "run"
    base = ["distill", "--model", str(model), "--random", "4", "--random-size", "16", "16", "--random-prompt-len",
            "3", "--kernel-sizes", "3", "--batch-size", "2", "--max-steps", "1", "--warmup-steps", "1",
            "--no-progress", "--no-plot"]
    assert main(base + ["--init", "attention+fit", "--init-samples", "4", "--output-dir", str(out)]) == 0
    config = json.loads((out / "deltaconv" / "deltaconv.json").read_text())
    records = config["init"]
    assert set(records) == set(config["layers"])
    for r in records.values():
        assert r["init"] == "attention+fit" and r["fit"]["tokens"] == 4 * 8 * 8
        assert r["feature_error"] <= 1 and r["feature_error_closed_form"] < 1
    capsys.readouterr()
    assert main(base + ["--init", "attention+magic", "--output-dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "deltaconv distill: error: --init must be one of random, attention, attention+fit" in err
    assert main(base + ["--init-samples", "0", "--output-dir", str(tmp_path / "y")]) == 2
    assert "--init-samples" in capsys.readouterr().err
