"""The import graph of a first-party package, read from its source with `ast` (nothing is imported), and a check that
it has no cycle (docs/DESIGN.md §4: imports run one way, downward).

    python3 python/import_graph.py deltaconv_kernels [--strict] [--edges]

Edges: every `import` and `from ... import` of the package, at module level and inside functions and classes alike
(a function-local import closes a cycle at call time just as well); relative imports resolved against the importing
module's package. `import a.b` is an edge to `a.b`; `from a import b` is an edge to `a.b` when `a/b.py` or `a/b/` is
a module of the package, else to `a` itself (its `__init__`, the facade that binds `b`). `from a import _C`, a name
that neither is a source module nor is bound in `a/__init__.py`, is a compiled module and no edge. A module that
calls `importlib.import_module` with a computed name gets an edge to every module of the package named by a string
literal in it (a dispatch table of subcommands, say). Importing a parent package first runs its `__init__`, but
that is not an edge: the parent is already initialised when the child runs.

A cycle is a strongly connected component of more than one module; each is listed with shortest loops through its
members (until every member is on one) and where every import of each loop is. An "upward" import is one from a
module to a package that contains it (its own `__init__` facade or an ancestor's): when that package imports the
module back it is a cycle already; otherwise it is listed as a warning (an error with --strict).

Exit status: 0 clean, 1 a cycle (or, with --strict, an upward import), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    kind: str  # "module-level", "function-local" or "dynamic"


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file of the package (a package is its `__init__.py`)."""
    root = package_dir.parent
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if all(p.isidentifier() for p in parts):  # skip stray scripts such as `foo-bar.py`
            modules[".".join(parts)] = path
    return modules


def _bound_names(tree: ast.Module) -> set[str] | None:
    """Names a package's `__init__` binds when it runs (top level, inside `if`/`try`/`with`, not inside functions or
    classes); None when it may bind any name (a star import or a module `__getattr__`)."""
    names: set[str] = set()
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == "__getattr__" and node in tree.body:
                return None
            names.add(node.name)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
            continue
        for child in ast.iter_child_nodes(node):  # statements nested in if/try/with/for run too; functions do not
            if isinstance(child, ast.stmt):
                todo.append(child)
            else:
                names.update(n.id for n in ast.walk(child) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
    return names


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str | None:
    """The absolute module a `from X import ...` names (relative levels resolved), or None above the top."""
    if node.level == 0:
        return node.module
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level - 1 > len(base) - 1:
        return None
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _local_nodes(tree: ast.Module):
    """Yield (node, inside a function) for every node of the tree (a class body runs at import: not local)."""
    stack = [(tree, False)]
    while stack:
        node, local = stack.pop()
        yield node, local
        inner = local or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        stack.extend((child, inner) for child in ast.iter_child_nodes(node))


def _is_import_module_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    return (isinstance(f, ast.Attribute) and f.attr == "import_module") or (
        isinstance(f, ast.Name) and f.id in ("import_module", "__import__"))


def _edges_of(module: str, tree: ast.Module, modules: dict[str, Path], bound: dict[str, set[str] | None]) -> set[Edge]:
    """The imports of one module that name modules of the package (`bound`: the names each package binds)."""
    edges: set[Edge] = set()
    literals: dict[str, int] = {}
    dynamic = False

    def add(target: str | None, line: int, local: bool) -> None:
        if target in modules and target != module:
            edges.add(Edge(module, target, line, "function-local" if local else "module-level"))

    for node, local in _local_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno, local)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(module, module in bound, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:
                    add(sub, node.lineno, local)
                elif base not in bound or bound[base] is None or alias.name in bound[base]:
                    add(base, node.lineno, local)
                # else a compiled submodule such as `_C`: no source, not bound by the package, no edge
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules:
            literals.setdefault(node.value, node.lineno)
        elif _is_import_module_call(node):
            named = node.args[0] if node.args else None
            if isinstance(named, ast.Constant) and isinstance(named.value, str):
                add(named.value, node.lineno, local)
            else:
                dynamic = True
    if dynamic:
        edges.update(Edge(module, t, line, "dynamic") for t, line in literals.items() if t != module)
    return edges


def build_graph(package_dir: Path) -> tuple[dict[str, Path], list[Edge]]:
    """The package's modules and the import edges between them (self-imports left out)."""
    modules = module_names(package_dir)
    trees = {m: ast.parse(p.read_text(encoding="utf-8"), filename=str(p)) for m, p in modules.items()}
    bound = {m: _bound_names(trees[m]) for m, p in modules.items() if p.name == "__init__.py"}
    edges = set().union(*(_edges_of(m, tree, modules, bound) for m, tree in trees.items()))
    return modules, sorted(edges, key=lambda e: (e.source, e.target, e.line))


def strongly_connected(nodes, successors: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit on deep graphs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(successors.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(successors.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def shortest_loop(start: str, component: list[str], successors: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through `start` that stays inside its component: [start, b, ..., start]."""
    members = set(component)
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(successors.get(node, ())):
            if child not in members:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if child not in parent:
                parent[child] = node
                queue.append(child)
    raise AssertionError("a strongly connected component without a loop")


def cycles(modules, edges: list[Edge]) -> list[tuple[list[str], list[list[str]]]]:
    """(component, loops) for every import cycle: shortest loops through its members until each is on one."""
    successors: dict[str, set[str]] = {}
    for e in edges:
        successors.setdefault(e.source, set()).add(e.target)
    found = []
    for component in strongly_connected(modules, successors):
        if len(component) < 2:
            continue
        loops: list[list[str]] = []
        for member in component:
            if not any(member in loop for loop in loops):
                loops.append(shortest_loop(member, component, successors))
        found.append((component, loops))
    return found


def upward(edges: list[Edge]) -> list[Edge]:
    """Imports of a package by a module inside it (its own `__init__` facade or an ancestor's)."""
    return [e for e in edges if e.source.startswith(e.target + ".")]


def _where(modules: dict[str, Path], edges: list[Edge], source: str, target: str, root: Path) -> str:
    found = [e for e in edges if e.source == source and e.target == target]
    return ", ".join(f"{modules[source].relative_to(root)}:{e.line} ({e.kind})" for e in found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="import_graph.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path, help="the package folder, e.g. deltaconv_kernels")
    parser.add_argument("--strict", action="store_true", help="fail on upward imports too")
    parser.add_argument("--edges", action="store_true", help="print every edge")
    args = parser.parse_args(argv)
    if not (args.package / "__init__.py").is_file():
        parser.error(f"{args.package} is not a package folder (no __init__.py)")
    root = args.package.resolve().parent
    modules, edges = build_graph(args.package.resolve())
    found = cycles(modules, edges)
    ups = upward(edges)
    local = sum(e.kind == "function-local" for e in edges)
    dynamic = sum(e.kind == "dynamic" for e in edges)
    print(f"import graph of {args.package.name}: {len(modules)} modules, {len(edges)} first-party imports "
          f"({local} function-local, {dynamic} dynamic); {len(found)} cycle(s), {len(ups)} upward import(s)")
    if args.edges:
        for e in edges:
            print(f"  {e.source} -> {e.target}  line {e.line} ({e.kind})")
    for component, loops in found:
        print(f"cycle among {len(component)} modules: {', '.join(component)}")
        for loop in loops:
            print("  " + " -> ".join(loop))
            for a, b in zip(loop, loop[1:]):
                print(f"    {a} -> {b}: {_where(modules, edges, a, b, root)}")
    for e in ups:
        print(f"upward import: {e.source} -> {e.target}: {_where(modules, edges, e.source, e.target, root)}")
    return 1 if found or (args.strict and ups) else 0


if __name__ == "__main__":
    sys.exit(main())
