"""zoo/ has no import circle, and its layers import only what they may.

Imports inside functions count too: a lazy import keeps Hydra and W&B off the import path, but two
zoo modules that import each other, one of them lazily, are still a circle held together by timing.
A package's lazily exported names (a ``_LAZY = {name: module}`` table in its ``__init__``) count as
imports of the modules that define them.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "zoo"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def lazy_exports(package: str) -> dict[str, str]:
    """``{name: defining module}`` of a package's ``_LAZY`` table, read from its ``__init__`` as data."""
    init = ROOT.parent.joinpath(*package.split("."), "__init__.py")
    if not init.exists():
        return {}
    for node in ast.parse(init.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(getattr(t, "id", None) == "_LAZY" for t in targets):
            return ast.literal_eval(node.value)
    return {}


def from_imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every absolute ``from zoo... import ...`` in ``path``."""
    return [
        (node.module, [a.name for a in node.names])
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("zoo")
    ]


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The zoo modules ``path`` imports, anywhere in it (a package's ``__init__`` counted when it runs)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            lazy = lazy_exports(base) if base in modules else {}
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else lazy.get(a.name, base) for a in node.names]
        else:
            continue
        for target in targets:
            if not target.startswith("zoo"):
                continue
            parts = target.split(".")
            for i in range(2, len(parts) + 1):  # importing a.b.c runs a.b's __init__ too
                found.add(".".join(parts[:i]))
    # a module's own packages are already importing when it runs: an edge to them is no circle
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return {m for m in found if m in modules and m != name and m not in ancestors}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_imports():
    graph = import_graph()
    assert "zoo.attention.kernels" in graph["zoo.attention.attention"]
    assert "zoo.arch.session" in graph["zoo.arch.lm"]


def test_the_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_zoo_has_no_import_circle():
    assert cycles(import_graph()) == []


def test_lazy_exports_are_edges():
    graph = import_graph()
    assert "zoo.train.settings" in graph["zoo.bench.run"]  # from zoo.train import Settings


def test_other_packages_use_only_the_public_names_of_training():
    """zoo.bench, zoo.finetune and the rest ask zoo.train for what its ``__all__`` offers, never its modules."""
    import zoo.train

    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        if module_name(path).startswith("zoo.train"):
            continue
        for module, names in from_imports(path):
            if module.startswith("zoo.train."):
                wrong.append(f"{path.relative_to(ROOT.parent)}: from {module} import {', '.join(names)}")
            elif module == "zoo.train":
                wrong += [f"{path.relative_to(ROOT.parent)}: zoo.train.{n} is not public" for n in names if n not in zoo.train.__all__]
    assert wrong == []


def test_the_run_layer_stands_below_the_entry_points():
    """zoo.run serves zoo-train, zoo-bench and zoo-generate: it imports none of them."""
    above = ("zoo.train", "zoo.bench", "zoo.generation", "zoo.generate", "zoo.finetune")
    graph = import_graph()
    wrong = {m: sorted(d for d in deps if d.startswith(above)) for m, deps in graph.items() if m.startswith("zoo.run")}
    assert {m: d for m, d in wrong.items() if d} == {}
