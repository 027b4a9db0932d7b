"""``dml-dist bench`` suites: each prints a table and returns figures for ``--json``.

One module (or package) per suite: ``losses``, ``scaling``, ``mining``, ``data``, ``reproduce``,
``peers``, ``gpu``; ``timing`` holds the interleaved timing they share, ``omniglot`` the Omniglot images
that ``data``, ``reproduce`` and ``peers`` can use. The command line of each suite is in
``dml_dist/cli/bench.py``.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The checkout holding the package: the suites' run directories (``runs/``) and data cache
(``data/cache/``) go under it."""
