"""Every package ``dml_dist`` imports is declared in pyproject.toml: a plain dependency, or an
extra for what only some commands need (faiss: ``[cpu]``/``[gpu]``, both giving the same module,
checked first by ``train``/``eval``: ``train/preflight.py``; pytorch-metric-learning: the bench's
peers)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib

from tests.conftest import REPO


def _imported_top_level_modules() -> dict[str, str]:
    """Top-level module -> a file of ``dml_dist`` that imports it (module-level or inside a function)."""
    found: dict[str, str] = {}
    for path in sorted((REPO / "dml_dist").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_package_is_declared() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    declared = {_normalized(re.split(r"[\[<>=!~; ]", r)[0]) for r in requirements}
    # What a declared distribution brings along (ray[default] pulls aiohttp, ...) is still not ours to import.
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for module, where in _imported_top_level_modules().items():
        if module in sys.stdlib_module_names or module in ("dml_dist", "__future__"):
            continue
        dists = {_normalized(d) for d in providers.get(module, [])}
        if not dists & declared:
            undeclared[module] = (where, sorted(dists))
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
