"""python/import_graph.py: it finds import cycles (module-level, function-local, relative, `import a.b`, a package's
facade, dynamic dispatch tables) in small packages written here, passes an acyclic one, and the package itself has
no cycle (docs/DESIGN.md §4)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "python" / "import_graph.py"
if not SCRIPT.is_file():
    pytest.skip("python/import_graph.py is not in this tree (an installed package is being tested)",
                allow_module_level=True)


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "pkg"


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


ACYCLIC = {
    "__init__.py": "from pkg.top import run\n",
    "top.py": "from pkg import low\nfrom .sub import leaf\n\ndef run():\n    import pkg.sub.leaf as lf\n",
    "low.py": "import os\n",
    "sub/__init__.py": "",
    "sub/leaf.py": "from .. import low\nfrom pkg import _C  # a compiled module: no source, not bound in __init__\n",
}


def test_an_acyclic_package_passes(tmp_path):
    done = _run(_package(tmp_path, ACYCLIC), "--edges")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 modules" in done.stdout and "0 cycle(s), 0 upward" in done.stdout
    edges = {line.split("  line")[0].strip() for line in done.stdout.splitlines() if " -> " in line}
    assert edges == {"pkg -> pkg.top", "pkg.top -> pkg.low", "pkg.top -> pkg.sub.leaf", "pkg.sub.leaf -> pkg.low"}


@pytest.mark.parametrize("files, loop", [
    # a function-local import closes the loop
    ({"a.py": "import pkg.b\n", "b.py": "def f():\n    from pkg import a\n"}, "pkg.a -> pkg.b -> pkg.a"),
    # relative imports, resolved from a subpackage
    ({"sub/__init__.py": "", "sub/x.py": "from ..y import thing\n", "y.py": "from .sub import x\nthing = 1\n"},
     "pkg.sub.x -> pkg.y -> pkg.sub.x"),
    # `import a.b` is an edge to a.b, through three modules
    ({"a.py": "import pkg.b\n", "b.py": "import pkg.c\n", "c.py": "def g():\n    import pkg.a\n"},
     "pkg.a -> pkg.b -> pkg.c -> pkg.a"),
    # an upward import of the package's own facade, which imports the module back
    ({"__init__.py": "from pkg.m import f\nVERSION = 1\n", "m.py": "def f():\n    from pkg import VERSION\n"},
     "pkg -> pkg.m -> pkg"),
    # a dispatch table of module names used with importlib.import_module, and a module that imports it back
    ({"cli.py": "import importlib\nTABLE = {'x': 'pkg.cmd'}\ndef main(n):\n    importlib.import_module(TABLE[n])\n",
      "cmd.py": "def run():\n    from pkg.cli import TABLE\n"}, "pkg.cli -> pkg.cmd -> pkg.cli"),
])
def test_a_cycle_fails_and_is_listed(tmp_path, files, loop):
    done = _run(_package(tmp_path, {"__init__.py": "", **files}))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 cycle(s)" in done.stdout and f"  {loop}\n" in done.stdout, done.stdout


def test_upward_import_without_cycle_is_a_warning_or_with_strict_an_error(tmp_path):
    pkg = _package(tmp_path, {"__init__.py": "VERSION = 1\n", "m.py": "from pkg import VERSION\n"})
    done = _run(pkg)
    assert done.returncode == 0 and "upward import: pkg.m -> pkg" in done.stdout
    assert _run(pkg, "--strict").returncode == 1


def test_not_a_package_is_a_usage_error(tmp_path):
    done = _run(tmp_path)
    assert done.returncode == 2 and "no __init__.py" in done.stderr


def test_the_package_has_no_import_cycle():
    done = _run("deltaconv_kernels", cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
