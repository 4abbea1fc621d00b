"""python/mutation_check.py: its mutant list matches the code (no stale records) and its command line."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "python" / "mutation_check.py"
if not SCRIPT.is_file():
    pytest.skip("python/mutation_check.py is not in this tree (an installed package is being tested)",
                allow_module_level=True)


def _module():
    spec = importlib.util.spec_from_file_location("mutation_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_every_mutant_applies_exactly_once_and_names_existing_tests():
    mod = _module()
    names = [m.name for m in mod.MUTANTS]
    assert len(names) == len(set(names))
    for m in mod.MUTANTS:
        text = (ROOT / m.file).read_text()
        assert text.count(m.old) == 1, f"{m.name}: its text occurs {text.count(m.old)} times in {m.file} (stale)"
        assert m.old != m.new
        for node in m.tests:
            path, _, test = node.partition("::")
            assert (ROOT / path).is_file(), f"{m.name}: no test file for {node}"
            assert f"def {test.split('[')[0]}(" in (ROOT / path).read_text(), f"{m.name}: no test {node}"


def test_stale_and_ambiguous_records_are_reported(tmp_path):
    mod = _module()
    (tmp_path / "f.py").write_text("a = 1\nb = 1\n")
    stale = mod.Mutant("x", "f.py", "c = 1", "c = 2", "", ())
    twice = mod.Mutant("y", "f.py", " = 1", " = 2", "", ())
    missing = mod.Mutant("z", "nope.py", "a", "b", "", ())
    assert mod._apply(tmp_path, stale) == ("stale", None)
    assert mod._apply(tmp_path, twice) == ("ambiguous", None)
    assert mod._apply(tmp_path, missing) == ("stale", None)
    state, original = mod._apply(tmp_path, mod.Mutant("w", "f.py", "a = 1", "a = 9", "", ()))
    assert state == "ok" and original == "a = 1\nb = 1\n"
    assert (tmp_path / "f.py").read_text() == "a = 9\nb = 1\n"


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_list_and_bad_arguments():
    done = _run("--list", "--only", "ref-gate-scale")
    assert done.returncode == 0 and "ref-gate-scale" in done.stdout and "ref-sigmoid" not in done.stdout
    done = _run("--only", "no-such-mutant")
    assert done.returncode == 2 and done.stderr.startswith("error: --only: unknown mutant(s) no-such-mutant")
    assert "Traceback" not in done.stderr
    done = _run("--timeout", "-1")
    assert done.returncode == 2 and done.stderr.startswith("error: --timeout")
