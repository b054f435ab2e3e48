"""The house's layout: imports run one way, cli -> app -> (viz | metrics) -> explainers -> core -> errors.

Every import counts, also one inside a function: a module never reaches back
up the chain, and there are no cycles.
"""
from __future__ import annotations

import ast

from .helpers import ROOT

PACKAGE = ROOT / "camkit"

# Lower storeys first. A module may import its own group and any lower storey.
STOREYS: list[tuple[str, ...]] = [
    ("camkit.errors",),
    ("camkit.ops", "camkit.modes", "camkit.layouts", "camkit.calls", "camkit.progress"),
    ("camkit.layers", "camkit.targets", "camkit.cluster", "camkit.results", "camkit.detection"),
    ("camkit.capture",),
    ("camkit.attention",),
    ("camkit.capture_input",),  # the pixel methods' capture: reuses capture's scores and checks
    ("camkit.explainers",),
    ("camkit.metrics", "camkit.viz"),
    ("camkit.app", "camkit.compat"),
    ("camkit.cli",),
    ("camkit", "camkit.__main__"),
]


def _module_name(path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, object]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(name: str, path, known: set[str]) -> set[str]:
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from package import module` imports the module; `from module import name` the module.
            targets = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in known else origin for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in known and target != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _group(name: str) -> tuple[int, str]:
    best: tuple[int, str] | None = None
    for storey, groups in enumerate(STOREYS):
        for group in groups:
            if (name == group or name.startswith(group + ".")) and (best is None or len(group) > len(best[1])):
                best = (storey, group)
    assert best is not None, f"{name} has no storey in the layout; add it to STOREYS"
    return best


def test_imports_run_one_way() -> None:
    wrong = []
    for module, targets in _graph().items():
        storey, group = _group(module)
        for target in sorted(targets):
            target_storey, target_group = _group(target)
            if not (target_storey < storey or target_group == group):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target] if target in path else [node, target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_graph_sees_imports_inside_functions() -> None:
    # A guard on the guard: a function-level import of the application from the core is caught.
    graph = _graph()
    assert "camkit.app.demo" in graph["camkit.app.models"]  # imported inside _demo()
    assert "camkit.explainers" in graph["camkit.viz.figures"]
