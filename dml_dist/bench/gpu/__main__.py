"""``python -m dml_dist.bench.gpu [--json FILE] [--minutes 4]``: ``dml-dist bench gpu`` where only
torch and timm are installed (``suite.py``)."""

from __future__ import annotations

import argparse
import sys

from dml_dist.bench.gpu.suite import run_gpu_check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dml_dist.bench.gpu", description=__doc__)
    parser.add_argument("--json", help="write the report to this JSON file (after every section)")
    parser.add_argument("--minutes", type=float, default=4.0, help="the whole check ends within this time")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error(f"--minutes: expected a positive number, got {args.minutes}")
    return 0 if run_gpu_check(args.json, args.minutes)["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
