"""The package's import graph has no cycles: libraries never import the commands above them.

Every ``import`` counts, at module level and inside functions (a lazy import
still ties two modules together); only ``if TYPE_CHECKING:`` blocks are left
out, since they never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "celery_policy"

# Pairs of modules allowed to import each other (none: every cycle is a failure).
ALLOWED_CYCLES: frozenset[frozenset[str]] = frozenset()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Names imported anywhere in ``tree`` (``from x import y`` yields ``x.y``)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (name for child in node.orelse for name in _imports(child, module, is_package))
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            # ``x.y`` resolves to the module x.y when there is one, else to x (y is a name in x)
            yield from (f"{source}.{alias.name}" for alias in node.names)
        yield from _imports(node, module, is_package)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports.

    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to
    ``a.b``. The parent packages a submodule import also runs are left out: every
    module would otherwise reach ``celery_policy/__init__`` (the public API, which
    imports the runtime) and the whole package would be one cycle.
    """
    paths = {_module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets: set[str] = set()
        for name in _imports(tree, module, path.name == "__init__.py"):
            parts = name.split(".")
            # the longest prefix that is a module of ours: the module itself, not the packages it lives in
            found = next(
                (".".join(parts[:end]) for end in range(len(parts), 0, -1) if ".".join(parts[:end]) in paths), None
            )
            if found is not None and found != module:
                targets.add(found)
        graph[module] = targets
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components of more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_graph_sees_function_level_imports() -> None:
    """The scan itself works: a lazy import inside a function is an edge."""
    tree = ast.parse("def f():\n    from celery_policy.loader import load\n")
    assert "celery_policy.loader.load" in set(_imports(tree, "celery_policy.x", False))


def test_the_graph_skips_type_checking_blocks() -> None:
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from celery_policy import cli\n")
    assert "celery_policy.cli" not in set(_imports(tree, "celery_policy.x", False))


def test_celery_policy_has_no_import_cycle() -> None:
    cycles = [
        component for component in strongly_connected(import_graph()) if frozenset(component) not in ALLOWED_CYCLES
    ]
    assert cycles == [], "import cycles (each list imports itself through function- or module-level imports)"
