"""``dml-dist bench`` suites: each prints a table and returns figures for ``--json``."""
