"""The check every CLI misuse test makes: exit code 2, `deltaconv <command>: error: <match>` on stderr, no
traceback."""

from __future__ import annotations

from deltaconv_kernels.cli import main


def usage_error(capsys, argv: list[str], match: str) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.out[-2000:] + captured.err[-2000:]
    assert "Traceback" not in captured.err
    assert f"deltaconv {argv[0]}: error: " in captured.err and match in captured.err, captured.err
    return captured.err


def tiny_pixart_folder(tmp_path_factory):
    """A tiny PixArt saved as a diffusers folder: what `deltaconv distill --model` reads (for module fixtures)."""
    from tiny_models import tiny_pixart

    path = tmp_path_factory.mktemp("model") / "pixart"
    tiny_pixart().save_pretrained(path)
    return path


def distill_args(model_dir, out, *extra, steps=2):
    """`deltaconv distill` on random data for `steps` steps, checkpointing every step, quiet."""
    return ["distill", "--model", str(model_dir), "--random", "4", "--random-size", "16", "16",
            "--random-prompt-len", "3", "--kernel-sizes", "3", "--batch-size", "2", "--checkpoint-every", "1",
            "--log-every", "1", "--warmup-steps", "1", "--output-dir", str(out), "--no-progress", "--no-plot",
            "--max-steps", str(steps), *extra]
