"""The package's import graph, read from the source (every import statement, including the lazy
ones inside functions): no cycles among modules, and no module imports a package of a higher
layer. The layer order is the one the README documents:

    errors, atomic, checkpoint (shared utilities)
    -> ops, metrics -> data -> models, engine, protocol -> systems -> runs -> bench
    -> reproduce, app -> cli

``hfcn_bench.train`` (the old import path, re-exporting :mod:`hfcn_bench.systems.hfcn_training`)
and ``__main__`` sit on top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import hfcn_bench

ROOT = Path(hfcn_bench.__file__).resolve().parent

LAYERS = [
    {"errors", "atomic", "checkpoint"},
    {"ops", "metrics"},
    {"data"},
    {"models", "engine", "protocol"},
    {"systems"},
    {"runs"},
    {"bench"},
    {"reproduce", "app"},
    {"cli"},
    {"train", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """``{module: {modules of hfcn_bench it imports}}``; ``from pkg import name`` counts as an
    import of ``pkg.name`` when that is a module, else of ``pkg``."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                if origin.split(".")[0] != "hfcn_bench":
                    continue
                for alias in node.names:
                    sub = f"{origin}.{alias.name}"
                    targets.add(sub if sub in mods else origin)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == "hfcn_bench"}
        resolved = set()
        for t in targets:
            while t not in mods and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in mods and t != name:
                resolved.add(t)
        graph[name] = resolved
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    # a relative import of a sibling module and a lazy import inside a function both count
    assert "hfcn_bench.systems.hfcn_training" in graph["hfcn_bench.systems.hfcn"]
    assert "hfcn_bench.runs" in graph["hfcn_bench.reproduce.cells"]  # imported inside a function there
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_every_package_has_a_layer():
    assert {_layer(m) for m in _modules()} - {""} <= set(RANK), "a new package needs its place in LAYERS"


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{m} -> {t}"
        for m, targets in import_graph().items()
        for t in targets
        if _layer(m) and _layer(t) and RANK[_layer(t)] > RANK[_layer(m)]
    ]
    assert upward == []
