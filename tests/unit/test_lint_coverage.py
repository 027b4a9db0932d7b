"""The house rules that a reader relies on: every Python file is linted (ruff's default exclude
list holds ``dist``, which once hid ``dml_dist/dist/collectives.py``; pyproject.toml sets the
list), no package file grows past 320 lines, and ``tests/unit/`` mirrors the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_ruff_checks_every_python_file() -> None:
    ruff = Path(sys.executable).parent / "ruff"
    out = subprocess.run(
        [str(ruff), "check", "--show-files", "dml_dist", "tests"], cwd=REPO, capture_output=True, text=True, check=True
    )
    checked = {Path(line.strip()).resolve() for line in out.stdout.splitlines() if line.strip().endswith(".py")}
    present = {p.resolve() for folder in ("dml_dist", "tests") for p in (REPO / folder).rglob("*.py")}
    assert present - checked == set()


def test_every_package_file_stays_under_320_lines() -> None:
    """One job per file: a module that grows past this is doing two things (issue "The house")."""
    long = {
        str(p.relative_to(REPO)): n
        for p in (REPO / "dml_dist").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 320
    }
    assert long == {}


def test_unit_tests_mirror_the_package() -> None:
    folders = {p.name for p in (REPO / "tests" / "unit").iterdir() if p.is_dir() and p.name != "__pycache__"}
    packages = {p.name for p in (REPO / "dml_dist").iterdir() if (p / "__init__.py").is_file()}
    assert folders <= packages, folders - packages
