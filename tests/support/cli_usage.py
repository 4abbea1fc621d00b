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
