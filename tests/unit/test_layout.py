"""The package layout: every module imports on its own, no two modules import each other (directly or
through others), and the experiment's stage registry matches its config."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "probekit"


def _modules() -> dict[str, Path]:
    """Every module of `probekit` (packages by their ``__init__.py``), by dotted name."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The probekit modules ``name`` imports anywhere in its file (top level and inside functions), except
    under ``if TYPE_CHECKING:``. ``from pkg import x`` counts as importing ``pkg.x`` when that is a
    module, else ``pkg``; importing ``pkg.mod`` is not counted as importing ``pkg``'s ``__init__``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _is_type_checking(node)
        for child in node.body
        for n in ast.walk(child)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from ..a import b
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source)
    return {m for m in found if m in modules and m != name}


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle path (``a -> b -> ... -> a``) per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_path_in(component, graph) for component in components]


def _path_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first), as a list of names."""
    members, start = set(component), component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
                if w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    return component


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}, "g": set()}
    assert _cycles(graph) == [["a", "b", "c", "a"], ["e", "f", "e"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_sees_function_level_and_relative_imports(tmp_path):
    modules = {
        "probekit.x": tmp_path / "x.py",
        "probekit.y": tmp_path / "y.py",
        "probekit.z": tmp_path / "z.py",
        "probekit.w": tmp_path / "w.py",
    }
    modules["probekit.x"].write_text(
        textwrap.dedent("""
        from typing import TYPE_CHECKING
        from probekit import y
        if TYPE_CHECKING:
            from probekit.w import thing
        def f():
            from .z import g
    """)
    )
    assert _imports("probekit.x", modules["probekit.x"], modules) == {"probekit.y", "probekit.z"}


def test_no_import_cycles_between_modules():
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_every_module_imports_on_its_own():
    """Each module in a fresh interpreter state for probekit (third-party modules stay loaded, so this is
    one subprocess, not one per module)."""
    names = sorted(_modules())
    script = textwrap.dedent(f"""
        import importlib, sys, traceback
        failed = []
        for name in {names!r}:
            for loaded in [m for m in sys.modules if m == "probekit" or m.startswith("probekit.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception:
                failed.append(name + ": " + traceback.format_exc(limit=3))
        print("\\n".join(failed))
        sys.exit(1 if failed else 0)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------------------------------
# the experiment's stages


def test_stage_registry_matches_the_config():
    from probekit.experiment import stages
    from probekit.experiment.config import Analyses

    assert set(stages.STAGES) == set(Analyses.model_fields)
    for name, stage in stages.STAGES.items():
        assert stage is getattr(stages, name)
        params = list(inspect.signature(stage).parameters.values())
        assert len(params) == 2 and params[0].name == "run", f"stage {name} must take (run, opts)"
        assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)


def test_stages_are_run_from_the_registry_only():
    for path in (PACKAGE / "experiment").glob("*.py"):
        assert "getattr(stages" not in path.read_text(), f"{path.name}: run stages through stages.STAGES"
