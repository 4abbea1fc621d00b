"""The layout of the diffusers integration (deltaconv_kernels/integrations/diffusers/): imports only downward (no
circle, function-local imports included), first-party imports only at module level, the leaf modules import
nothing of the package, the old module paths are the same objects, and the package imports without diffusers."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import deltaconv_kernels

PACKAGE = "deltaconv_kernels.integrations.diffusers"
ROOT = Path(deltaconv_kernels.__file__).resolve().parent
FOLDER = ROOT / "integrations" / "diffusers"
LEAVES = ("files", "sites")


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(first-party module imported, whether at module level) for every import statement of the file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deltaconv_kernels"):
            # `from pkg import mod` imports the submodule pkg.mod when there is one
            names = [f"{node.module}.{a.name}" for a in node.names]
            found += [(n if _is_module(n) else node.module, id(node) in top) for n in names]
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names if a.name.startswith("deltaconv_kernels")]
    return found


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(FOLDER.glob("*.py")):
        name = path.stem
        graph[name] = {m[len(PACKAGE) + 1:] for m, _ in _imports(path) if m.startswith(PACKAGE + ".")}
    return graph


def test_no_import_circle_and_leaves_import_nothing_of_the_package():
    graph = _graph()
    assert set(graph) >= {"__init__", "files", "sites", "hub", "attention", "layers", "saving", "conversion", "loading",
                          "released", "baselines", "linfusion"}
    for leaf in LEAVES:
        assert graph[leaf] == set(), leaf
    assert not any("__init__" in deps for deps in graph.values())  # the public face imports, nothing imports it
    done, visiting = set(), []

    def visit(node):
        assert node not in visiting, f"import circle: {' -> '.join(visiting[visiting.index(node):] + [node])}"
        if node in done:
            return
        visiting.append(node)
        for dep in graph[node]:
            visit(dep)
        visiting.pop()
        done.add(node)

    for node in graph:
        visit(node)


def test_first_party_imports_are_at_module_level():
    local = {(path.name, m) for path in FOLDER.glob("*.py") for m, at_top in _imports(path) if not at_top}
    assert local == set()


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)


def test_imports_without_diffusers_and_says_what_is_missing():
    # `sys.modules["diffusers"] = None` makes every import of diffusers fail, as on an image without it.
    pytest.importorskip("safetensors", reason="the diffusers integration needs safetensors")
    done = _run("import sys; sys.modules['diffusers'] = None\n"
                "import deltaconv_kernels\n"
                "from deltaconv_kernels.integrations import diffusers as dd\n"
                "try:\n"
                "    dd.convert(object())\n"
                "except ImportError as e:\n"
                "    print('refused:', e)\n")
    assert done.returncode == 0, done.stderr
    assert "refused: deltaconv_kernels.integrations.diffusers needs the `diffusers` package" in done.stdout


def test_package_and_baselines_import_lazily():
    done = _run("import sys\n"
                "import deltaconv_kernels.baselines.window_blocks, deltaconv_kernels.baselines.ditfastattn_schedule\n"
                "import deltaconv_kernels.flops\n"
                "loaded = sorted(m for m in sys.modules if m.startswith('deltaconv_kernels.baselines.'))\n"
                "print(loaded, 'deltaconv_kernels.integrations' in sys.modules, 'diffusers' in sys.modules)\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['deltaconv_kernels.baselines.ditfastattn_schedule',",
                                   "'deltaconv_kernels.baselines.window_blocks']", "False", "False"]
