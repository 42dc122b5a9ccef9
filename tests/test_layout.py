"""The house rules of the code's layout, read from the source as installed (pyproject's package-dir mapping).

Each folder is a room; imports go down only (the table below), no module imports itself through
others, and no function outside the tests is longer than a screen. A change that breaks a rule
fails here with the file and the import that broke it.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# room -> the rooms it may import (besides itself). The top floor (switchgen/: the CLI, the commands,
# the API app, the bench, the chat REPL, ChatSwitchGeneration) may import every room.
ALLOWED = {
    "core": set(),
    "kits": {"core"},
    "servers": {"core", "kits"},
    "tasks": {"core", "kits"},
    "analysis": {"core"},
    "nodes": {"core", "servers"},
    "graph": {"core", "nodes", "servers"},
    "evaluation": {"core", "graph", "servers", "tasks"},
    "training": {"core", "graph", "servers", "tasks", "evaluation", "analysis"},
}
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    """Every module of the package by its installed name (switchgen.graph.builder -> graph/builder.py)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found: dict[str, Path] = {}
    for package, folder in config["package-dir"].items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def room(name: str, mods: dict[str, Path]) -> str:
    """The room a module lives in: its folder under the project root."""
    return mods[name].relative_to(ROOT).parts[0]


def imports(path: Path, mods: dict[str, Path]) -> set[str]:
    """The package's modules that `path` imports anywhere (functions and TYPE_CHECKING blocks too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] or [node.module]
            names = [n if n in mods else node.module for n in names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            while name and name not in mods:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


def test_imports_go_down_only():
    mods = modules()
    assert "switchgen.core.config" in mods and "switchgen.graph.builder" in mods
    wrong = []
    for name, path in mods.items():
        here = room(name, mods)
        if here == "switchgen":
            continue
        for target in imports(path, mods) - {name}:
            there = room(target, mods)
            if there != here and there not in ALLOWED[here]:
                wrong.append(f"{path.relative_to(ROOT)} imports {target} ({here} -> {there})")
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_itself_through_others():
    mods = modules()
    graph = {name: imports(path, mods) - {name} for name, path in mods.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                return [*path[path.index(target):], target] if target in path else [name, target]
            if target not in state and (loop := visit(target, [*path, target])):
                return loop
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (loop := visit(name, [name])):
            raise AssertionError("import cycle: " + " -> ".join(loop))


def test_no_function_longer_than_a_screen():
    long = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "\n".join(long)


def test_every_package_folder_is_installed():
    """A folder with an __init__.py that pyproject does not list would be missing from a built wheel."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    for package, folder in config["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            assert ".".join([package, *parts]) in listed, f"{init.parent.relative_to(ROOT)} is not in pyproject's packages"
