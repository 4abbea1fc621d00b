"""The dependency table (deltaconv_kernels/extras.py) against what the package really imports and declares.

Every third-party import of every module is read with `ast` (no module is imported): torch, numpy and the standard
library are allowed everywhere, the optional backends (triton, natten) everywhere they are used, anything else only
in a feature whose extra lists it. What a module needs at import time includes what the package modules it imports
at module level need, so a core module importing a feature module at the top is caught too.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from pathlib import Path

import pytest
from source_tree import ROOT

from deltaconv_kernels import extras

ALWAYS = {"torch", "numpy", "deltaconv_kernels"} | set(sys.stdlib_module_names)


def _package_modules() -> dict[str, Path]:
    root = ROOT / "deltaconv_kernels"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path, module: str) -> tuple[set[str], set[str]]:
    """(every imported absolute module name, those imported when the module itself is imported)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    every, at_import = set(), set()

    def visit(node: ast.AST, top: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) or _is_type_checking(node):
            top = False
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            # `from pkg import sub` may import a sub-module: count both.
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        every.update(names)
        if top:
            at_import.update(names)
        for child in ast.iter_child_nodes(node):
            visit(child, top)

    visit(ast.parse(path.read_text(encoding="utf-8")), True)
    return every, at_import


def _third_party(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names} - ALWAYS


def _allowed(module: str) -> set[str]:
    allowed = set(extras.OPTIONAL_BACKENDS)
    for extra in extras.extras_for(module):
        allowed |= {extras.import_name(r) for r in extras.EXTRAS[extra]}
    return allowed


def _needed_at_import(module: str, graph: dict[str, set[str]], direct: dict[str, set[str]]) -> set[str]:
    """Third-party packages importing `module` imports: its own top-level ones and those of the package modules
    (and their parent packages) it imports at the top, transitively."""
    seen, todo, needed = set(), [module], set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        needed |= direct[m]
        parts = m.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in graph)
        todo.extend(n for n in graph[m] if n in graph)
    return needed


def test_every_third_party_import_is_declared_for_its_feature():
    modules = _package_modules()
    assert "deltaconv_kernels.extras" in modules and len(modules) > 20, sorted(modules)
    every, graph, direct = {}, {}, {}
    for module, path in modules.items():
        every[module], at_import = _imports(path, module)
        graph[module] = at_import
        direct[module] = _third_party(at_import)
    undeclared = []
    for module in modules:
        for package in sorted((_third_party(every[module]) | _needed_at_import(module, graph, direct))
                              - _allowed(module)):
            undeclared.append(f"{module} imports {package}: not in the extras {extras.extras_for(module) or '(none)'}")
    assert not undeclared, "\n".join(undeclared)


def test_tests_and_scripts_import_only_what_the_set_up_installs():
    """tests/, benchmarks/ and python/ import only packages of [all] (what python/dev.sh installs for the suite), so
    where dev.sh could install everything no test skips for a missing package."""
    local = set()
    for folder in ("tests", "benchmarks", "python"):
        for path in (ROOT / folder).rglob("*.py"):
            local |= {path.stem, *(p.name for p in path.relative_to(ROOT / folder).parents if p.name)}
    allowed = ALWAYS | local | set(extras.OPTIONAL_BACKENDS) | {extras.import_name(r) for r in extras.EXTRAS["all"]}
    undeclared = []
    for folder in ("tests", "benchmarks", "python"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            names, _ = _imports(path, "scripts.x")
            undeclared += [f"{path.relative_to(ROOT)} imports {p}" for p in sorted({n.split(".")[0] for n in names}
                                                                               - allowed)]
    assert not undeclared, "\n".join(undeclared)


def test_the_scan_sees_feature_imports():
    """The scan can fail: it sees the package's feature imports, and a core module may import none of them."""
    modules = _package_modules()
    seen = set().union(*(_third_party(_imports(path, m)[0]) for m, path in modules.items()))
    assert {"diffusers", "matplotlib", "tqdm", "safetensors"} <= seen, seen
    assert "diffusers" not in _allowed("deltaconv_kernels.modules")
    assert extras.extras_for("deltaconv_kernels.bench.e2e") == ("bench", "diffusers")  # the longest name counts
    assert extras.extras_for("deltaconv_kernels.bench.grid") == ("bench",)


def test_extras_table_is_consistent():
    assert set(extras.EXTRAS) >= {"diffusers", "bench", "distill", "analysis", "test", "all"}
    for feature, names in extras.FEATURE_EXTRAS.items():
        assert set(names) <= set(extras.EXTRAS), feature
    every = {r for name, reqs in extras.EXTRAS.items() if name != "all" for r in reqs}
    assert set(extras.EXTRAS["all"]) == every
    assert not {extras.pip_name(r) for r in every} & {"torch", *extras.REQUIRES}, "a real dependency in an extra"
    assert extras.import_name("scikit-image") == "skimage" and extras.import_name("pytest-benchmark") == \
        "pytest_benchmark" and extras.pip_name('triton; platform_system == "Linux"') == "triton"
    assert extras.applies_here('x; platform_system == "NoSuchOS"') is False
    with pytest.raises(ValueError, match="extra must be one of"):
        extras.missing("no-such-extra")


def test_installed_metadata_matches_the_table():
    """What pip installs (the installed package's metadata, written by setup.py from the table) is the table."""
    try:
        requires = importlib.metadata.requires("deltaconv_kernels") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("deltaconv_kernels is not installed (in-tree run): no metadata to compare")
    declared = {}
    for line in requires:
        name = extras.pip_name(line)
        extra = line.split('extra == "')[1].split('"')[0] if 'extra == "' in line else None
        declared.setdefault(extra, set()).add(name)
    assert declared[None] == {"torch", *extras.REQUIRES}
    for extra, reqs in extras.EXTRAS.items():
        assert declared[extra] == {extras.pip_name(r) for r in reqs}, extra
