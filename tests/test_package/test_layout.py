"""The layout keeps its promises: one-way dependencies between the pack's packages and no import circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

# Which top-level parts of the pack each part may import (DESIGN.md: nodes -> cointeract_core <- train), and inside
# cointeract_core which subpackages each subpackage may import: the model knows no files, weights know the model,
# the pipeline sits on top.
ALLOWED = {
    "cointeract_core.model": {"cointeract_core.model"},
    "cointeract_core.sampling": {"cointeract_core.sampling"},
    "cointeract_core.media": {"cointeract_core.media"},
    "cointeract_core.weights": {"cointeract_core.weights", "cointeract_core.model"},
    "cointeract_core.runtime": {"cointeract_core.runtime", "cointeract_core.model", "cointeract_core.weights"},
    "cointeract_core.toy": {"cointeract_core.toy", "cointeract_core.model", "cointeract_core.weights"},
    "cointeract_core.encoders": {"cointeract_core.encoders", "cointeract_core.weights", "cointeract_core.pipeline"},
    "train.toyworld": {"train.toyworld", "train", "cointeract_core"},
    "train.demo": {"train.demo", "train.toyworld", "train", "cointeract_core"},
    "train": {"train", "cointeract_core"},
    "nodes": {"nodes", "cointeract_core"},
}
# Importable from every part: the package root (lazy short names) and the exception type of input checks.
SHARED = {"cointeract_core", "cointeract_core.errors"}


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] in ("tests", "bench", "example_workflows", "build", "dist") or rel.parts[0].startswith("."):
            continue
        parts = rel.with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Pack modules imported anywhere in the file (top level or inside functions), relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        parts = package.split(".") if package else []
        base = ".".join([*parts[: len(parts) - node.level + 1], *([node.module] if node.module else [])])
        for alias in node.names:
            full = f"{base}.{alias.name}" if base else alias.name
            found.add(full if full in modules else base)
    return {m for m in found if m in modules and m != name}


@pytest.fixture(scope="module")
def graph(repo_root: Path) -> dict[str, set[str]]:
    modules = _modules(repo_root)
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _part(name: str) -> str:
    return next((p for p in sorted(ALLOWED, key=len, reverse=True) if name == p or name.startswith(p + ".")), name)


def test_no_import_circle(graph: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep) :], dep] if dep in stack else [node, dep]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_dependencies_point_one_way(graph: dict[str, set[str]]) -> None:
    wrong = []
    for name, deps in graph.items():
        part = _part(name)
        if part not in ALLOWED:
            continue
        for dep in deps:
            if not any(dep == a or dep.startswith(a + ".") for a in ALLOWED[part]) and dep not in SHARED:
                wrong.append(f"{name} imports {dep}")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_shared_errors_module_imports_nothing_of_ours(graph: dict[str, set[str]]) -> None:
    assert graph["cointeract_core.errors"] == set()


def test_train_top_level_holds_only_the_trainer(repo_root: Path) -> None:
    flat = sorted(p.name for p in (repo_root / "train").glob("*.py") if p.name.startswith(("world", "demo", "toy_")))
    assert not flat, f"toy world and demo modules belong in train/toyworld/ and train/demo/: {flat}"


def test_core_public_names_import(repo_root: Path) -> None:
    from comfyui_cointeract import cointeract_core

    for name in cointeract_core.__all__:
        assert getattr(cointeract_core, name) is not None, name
    with pytest.raises(AttributeError):
        cointeract_core.not_a_name  # noqa: B018
