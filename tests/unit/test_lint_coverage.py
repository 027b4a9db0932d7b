"""Every Python file of the package and the tests is linted: ruff's default exclude list holds
``dist``, which once hid ``dml_dist/dist/collectives.py`` (pyproject.toml sets the list)."""

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
