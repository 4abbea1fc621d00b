"""`deltaconv distill` end to end on a tiny saved PixArt: --help documents every option, a run writes its
outputs, --resume continues it, bad input gives a clear error."""

import json

from deltaconv_kernels.cli import build_parser, main


def _saved_model(tmp_path):
    from tiny_models import tiny_pixart

    path = tmp_path / "model"
    tiny_pixart().save_pretrained(path)
    return path


def test_help_explains_every_option():
    parser = build_parser(["distill"])
    sub = next(a for a in parser._actions if a.dest == "command").choices["distill"]
    undocumented = [a.option_strings for a in sub._actions if a.option_strings and not a.help]
    assert not undocumented
    text = sub.format_help()
    for option in ("--latents", "--images", "--random", "--resume", "--mixed-precision", "--feature-target",
                   "--snr-gamma", "--gradient-checkpointing", "accelerate launch"):
        assert option in text


def test_run_then_resume(tmp_path, capsys):
    model = _saved_model(tmp_path)
    out = tmp_path / "run"
    args = ["distill", "--model", str(model), "--random", "4", "--random-size", "16", "16", "16", "12",
            "--random-prompt-len", "3", "--kernel-sizes", "3", "--batch-size", "2", "--checkpoint-every", "1",
            "--log-every", "1", "--warmup-steps", "1", "--output-dir", str(out), "--no-progress"]
    assert main(args + ["--max-steps", "2"]) == 0
    assert {"checkpoint.pt", "history.csv", "history.json", "loss.png", "deltaconv"} <= {p.name for p in out.iterdir()}
    assert main(args + ["--max-steps", "3", "--resume"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [r["step"] for r in history] == [1, 2, 3]
    assert "PixArtTransformer2DModel" in capsys.readouterr().out


def test_clear_errors(tmp_path, capsys):
    code = main(["distill", "--model", str(tmp_path / "missing"), "--random", "2", "--output-dir", str(tmp_path)])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    model = _saved_model(tmp_path)
    code = main(["distill", "--model", str(model), "--images", str(tmp_path / "imgs"), "--output-dir",
                 str(tmp_path / "o"), "--kernel-sizes", "3"])
    assert code == 2 and "--text-encoder" in capsys.readouterr().err


def test_two_process_ddp_run(tmp_path):
    """Two processes (torch.distributed with gloo on CPU, which accelerate sets up): DDP over the ΔConvBlocks,
    batches sharded by process, one checkpoint written by the main process. (Resume is tested single-process:
    a second two-process launch would double this test's time.)"""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from deltaconv_kernels.distill.checkpointing import load_checkpoint

    model = _saved_model(tmp_path)
    out = tmp_path / "ddp"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "deltaconv_kernels.cli",
            "distill", "--model", str(model), "--random", "8", "--random-size", "16", "16", "--kernel-sizes", "3",
            "--batch-size", "2", "--checkpoint-every", "2", "--log-every", "1", "--warmup-steps", "1",
            "--output-dir", str(out), "--no-progress", "--no-plot", "--random-prompt-len", "3"]
    proc = subprocess.run(base + ["--max-steps", "2"], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("ΔConvBlock (preset") == 1  # the conversion report: main process only
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["config"]["num_processes"] == 2 and state["step"] == 2
    assert [r["step"] for r in state["history"]] == [1, 2]
    assert (out / "deltaconv" / "deltaconv.safetensors").is_file()


def test_a_baseline_student(tmp_path, capsys):
    """--student linfusion / neighborhood trains that baseline in every attn1 slot; ΔConvBlock-only options and a
    neighborhood student without its window are refused before anything runs."""
    from safetensors.torch import load_file

    model = _saved_model(tmp_path)
    base = ["distill", "--model", str(model), "--random", "2", "--random-size", "16", "16", "--random-prompt-len",
            "3", "--batch-size", "2", "--max-steps", "1", "--warmup-steps", "1", "--no-progress", "--no-plot"]
    for student, extra in (("linfusion", []), ("neighborhood", ["--kernel-sizes", "3"])):
        out = tmp_path / student
        assert main(base + ["--student", student, "--output-dir", str(out)] + extra) == 0
        keys = load_file(out / "student.safetensors").keys()
        assert keys and all(".layer." in k for k in keys) and any(k.endswith("to_q.weight") for k in keys)
        assert not (out / "deltaconv").exists()
    capsys.readouterr()
    assert main(base + ["--student", "neighborhood", "--output-dir", str(tmp_path / "x")]) == 2
    assert "--kernel-sizes K" in capsys.readouterr().err
    assert main(base + ["--student", "linfusion", "--gate", "sigmoid", "--output-dir", str(tmp_path / "y")]) == 2
    assert "--gate set ΔConvBlocks up" in capsys.readouterr().err
