"""The package's import graph, read from the source with ``ast``: no module imports one of a
higher layer, and no modules import each other in a circle. Every import counts, including those
inside functions and under ``TYPE_CHECKING``: a type-only import is still a dependency a reader
has to follow.

The layers, lowest first (a module may import from its own layer and those below):
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

LAYERS: list[set[str]] = [
    {"atomic", "run_files", "losses", "storage"},  # no dml_dist imports but their own (storage: atomic)
    {"config"},  # the experiment's fields; checks a loss's parameters by building it
    {"distributed", "observability"},
    {"data", "models"},
    {"eval", "mining"},
    {"train"},  # the worker and the driver
    {"tune", "jobs", "bench"},  # what drives training
    {"cli"},
    {"__main__"},
]
PACKAGE = REPO / "dml_dist"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """The package modules that ``module`` imports (``from a import b``: a.b where b is a module, else a)."""

    def known(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {known(alias.name) for alias in node.names if alias.name.startswith("dml_dist")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base.startswith("dml_dist"):
                found |= {
                    known(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base) for alias in node.names
                }
    return found - {module}


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {module: _imports(path, module, set(paths)) for module, path in paths.items()}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    if top == "__init__":
        return 0  # the package's face: its version string
    return next(i for i, names in enumerate(LAYERS) if top in names)


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_every_top_level_module_has_a_layer() -> None:
    tops = {m.split(".")[1] for m in _graph() if "." in m} - {"__init__"}
    assert tops <= set().union(*LAYERS), tops - set().union(*LAYERS)


def test_no_import_reaches_a_higher_layer() -> None:
    graph = _graph()
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if _layer(b) > _layer(a))
    assert upward == []


def test_no_import_circles() -> None:
    assert _circles(_graph()) == []


def test_the_reader_sees_real_imports() -> None:
    """The graph is read right: known edges of each kind are in it."""
    graph = _graph()
    assert "dml_dist.train.worker_plan" in graph["dml_dist.train.loop"]  # from a.b import C
    assert "dml_dist.run_files" in graph["dml_dist.eval.api"]  # from a import module, inside a function
    assert "dml_dist.cli.parser" in graph["dml_dist.cli.train"]
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


LOCATION_QUESTIONS = {"scheme_of", "is_uri", "is_remote", "url_scheme"}
"""Names that ask what kind a location is; ``local_path`` and ``is_local`` are storage's answers."""


def _asks_location_kind(source: str) -> list[str]:
    """Where ``source`` decides by itself whether a location is remote: a call of one of
    ``LOCATION_QUESTIONS``, or a test on ``"://"`` / ``"file://"`` (lines, as ``line: text``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        literal = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None
        if name in LOCATION_QUESTIONS or literal in ("://", "file://"):
            found.append(f"{node.lineno}: {name or literal}")
    return found


def test_only_the_storage_module_asks_whether_a_location_is_remote() -> None:
    """Issue 30's storage seam: one module (``dml_dist/storage.py``) knows local paths from URIs;
    everyone else reads, writes, lists and joins through it."""
    assert _asks_location_kind('if "://" in run_dir:\n    x = uri_storage.is_uri(run_dir)\n') == [
        "1: ://",
        "2: is_uri",
    ]
    askers = {
        str(path.relative_to(REPO)): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != PACKAGE / "storage.py" and (found := _asks_location_kind(path.read_text()))
    }
    assert askers == {}


def test_every_module_imports() -> None:
    """A name moved between modules breaks here, not first in a long test or on a cluster."""
    script = (
        "import importlib, pkgutil, dml_dist\n"
        "for m in pkgutil.walk_packages(dml_dist.__path__, 'dml_dist.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu"}
    subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, check=True, timeout=300)
