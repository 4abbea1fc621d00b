"""The `deltaconv` dispatcher: a subcommand whose optional packages are missing is refused before its module is
imported, with `deltaconv <cmd>: error: needs X, Y: pip install "deltaconv_kernels[<extra>]"` and exit code 2;
`bench e2e` (and its old spelling) also needs the diffusers extra; `python -m deltaconv_kernels.cli` is the same
entry point."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deltaconv_kernels.cli import dispatch, main


def _absent(*packages_by_extra):
    table = dict(packages_by_extra)
    return lambda extra: list(table.get(extra, []))


@pytest.mark.parametrize("argv, extra, packages", [
    (["bench", "--device", "cpu"], "bench", ["tqdm", "matplotlib"]),
    (["distill", "--model", "m"], "distill", ["diffusers", "accelerate"]),
    (["analyze", "--tiny", "pixart"], "analysis", ["diffusers"]),
])
def test_missing_extra_is_one_line_and_exit_2(monkeypatch, capsys, argv, extra, packages):
    monkeypatch.setattr(dispatch, "missing", _absent((extra, packages)))
    # the subcommand's module must not even be imported: point it at a module that does not exist
    module, help_text, extras = dispatch.SUBCOMMANDS[argv[0]]
    monkeypatch.setitem(dispatch.SUBCOMMANDS, argv[0], ("deltaconv_kernels.no_such_module", help_text, extras))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (f"deltaconv {argv[0]}: error: needs {', '.join(packages)}: "
                   f"pip install \"deltaconv_kernels[{extra}]\"\n")


@pytest.mark.parametrize("argv", [["bench", "e2e", "--tiny"], ["bench", "--end-to-end"]])
def test_bench_e2e_also_needs_diffusers(monkeypatch, capsys, argv):
    monkeypatch.setattr(dispatch, "missing", _absent(("bench", ["tqdm"]), ("diffusers", ["diffusers"])))
    assert main(argv) == 2
    assert capsys.readouterr().err == ("deltaconv bench: error: needs tqdm, diffusers: "
                                       "pip install \"deltaconv_kernels[bench,diffusers]\"\n")
    assert dispatch.needed_extras(["bench", "--device", "cpu"]) == ["bench"]  # the layer grid needs no diffusers


def test_only_the_missing_extra_is_named(monkeypatch, capsys):
    monkeypatch.setattr(dispatch, "missing", _absent(("diffusers", ["transformers"])))
    assert main(["bench", "e2e"]) == 2
    assert capsys.readouterr().err.endswith("needs transformers: pip install \"deltaconv_kernels[diffusers]\"\n")


def test_info_needs_no_extra_and_help_lists_every_command(capsys):
    assert dispatch.needed_extras(["info"]) == [] and dispatch.needed_extras([]) == []
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in dispatch.SUBCOMMANDS)


def test_python_dash_m_is_the_same_entry_point():
    proc = subprocess.run([sys.executable, "-m", "deltaconv_kernels.cli", "bench", "--rounds", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "deltaconv bench: error: --rounds must be >= 5" in proc.stderr
