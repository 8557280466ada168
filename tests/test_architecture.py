"""The layering rules of docs/architecture.md, checked on the source tree.

- no import circle between modules of ``src/snnk``, counting imports deferred into functions
  (a deferred import hides a circle, it does not remove it);
- no module imports a private name (``_x``) from another package;
- no file over 600 lines, no function over 80 statements.

Run ``python tests/test_architecture.py`` for the numbers (largest files and functions).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "snnk"
MAX_LINES = 600
MAX_STATEMENTS = 80


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _package_of(module: str, path: Path) -> str:
    """The package a module belongs to: itself for an ``__init__``, else its parent."""
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = _package_of(module, path).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking_imports(tree: ast.Module) -> set[ast.stmt]:
    """Imports under ``if TYPE_CHECKING:``: they never run, so they make no circle."""
    out: set[ast.stmt] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                out.update(n for n in ast.walk(sub) if isinstance(n, ast.Import | ast.ImportFrom))
    return out


def _targets(module: str, path: Path, node: ast.stmt, modules: dict[str, Path]) -> list[str]:
    """The snnk modules an import statement loads."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = _resolve(module, path, node)
        names = [base]
        for a in node.names:
            if f"{base}.{a.name}" in modules:
                names.append(f"{base}.{a.name}")
    # Only the named modules: a parent package is already being imported when one of its
    # modules runs, so "a.b.c imports a.b" is how packages work, not a circle.
    return [n for n in names if n.startswith("snnk") and n in modules and n != module]


def import_graph() -> dict[str, set[str]]:
    modules = _sources()
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        tree = ast.parse(path.read_text())
        type_only = _type_checking_imports(tree)
        deps: set[str] = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom) or node in type_only:
                continue
            deps.update(_targets(mod, path, node, modules))
        graph[mod] = deps
    return graph


def import_cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports() -> list[str]:
    """``from a.b import _x`` or ``import a._b`` where the importer is outside ``a.b``'s package.

    A private module (``snnk.features._base``) may be imported by modules of its own package
    (``snnk.features.*``); a private name may only be imported from the importer's own package.
    ``snnk._utils`` and ``snnk._version`` are the library's shared private layer and exempt.
    """
    modules = _sources()
    found = []
    for mod, path in modules.items():
        own = _package_of(mod, path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = _resolve(mod, path, node)
                if not base.startswith("snnk"):
                    continue
                if base.startswith(("snnk._utils", "snnk._version", "snnk._persist")):
                    continue
                parts = base.split(".")
                # a private module of a package is private to that package
                for i, part in enumerate(parts):
                    if _is_private(part):
                        owner = ".".join(parts[:i])
                        if not (own == owner or own.startswith(owner + ".")):
                            found.append(f"{mod}: from {base} import ...")
                        break
                base_pkg = (
                    base
                    if base in modules and modules[base].name == "__init__.py"
                    else (base.rpartition(".")[0])
                )
                for a in node.names:
                    if _is_private(a.name) and not (
                        own == base_pkg or own.startswith(base_pkg + ".")
                    ):
                        found.append(f"{mod}: from {base} import {a.name}")
    return found


def _statements(fn: ast.AST) -> int:
    """Statements in a function, those of functions nested in it included."""
    count = 0
    stack = list(getattr(fn, "body", []))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.stmt):
            count += 1
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                stack.extend(getattr(node, field, []) or [])
        elif isinstance(node, ast.excepthandler | ast.match_case):
            stack.extend(node.body)
    return count


def function_sizes() -> list[tuple[int, str]]:
    out = []
    for mod, path in _sources().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                out.append((_statements(node), f"{mod}.{node.name}:{node.lineno}"))
    return sorted(out, reverse=True)


def file_lengths() -> list[tuple[int, str]]:
    return sorted(
        ((len(p.read_text().splitlines()), str(p.relative_to(SRC))) for p in PACKAGE.rglob("*.py")),
        reverse=True,
    )


def test_no_import_cycle():
    assert import_cycles() == []


def test_no_private_import_across_packages():
    assert private_imports() == []


def test_file_length():
    assert [f for f in file_lengths() if f[0] > MAX_LINES] == []


def test_function_size():
    assert [f for f in function_sizes() if f[0] >= MAX_STATEMENTS] == []


if __name__ == "__main__":
    print("import cycles:", import_cycles())
    print("private imports:", *private_imports(), sep="\n  ")
    print("largest files:", *file_lengths()[:8], sep="\n  ")
    print("largest functions:", *function_sizes()[:8], sep="\n  ")
    sys.exit(0 if pytest else 1)
