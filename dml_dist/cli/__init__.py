"""The ``dml-dist`` command line: train | eval | embed | shards | datasets | config | bench | submit | jobs | tune.

Flags override the YAML config (``--steps 100`` is ``--set train.steps=100``); every user error
is reported as one line naming the field or file, with exit status 2. A config is a YAML file or
the name of a shipped one (``dml-dist train quickstart``).

The console is ours: library loggers speak at ``--log-level`` (WARNING by default) and known
warnings nobody can act on are filtered in every process (``observability/logging.py``); ``-q``
turns the progress bars off and the libraries down to ERROR. Progress bars go to stderr.

One module per group of commands, each with its parsers (``register``) and what they run:
``train`` (train, tune), ``evaluate`` (eval, embed), ``shards``, ``datasets``, ``config``, ``bench`` (one
subcommand per suite), ``cluster`` (submit, jobs), on the shared pieces in ``parser``; ``build_parser`` puts them together.
"""

from __future__ import annotations

import argparse
import sys

from dml_dist import __version__
from dml_dist.cli import bench, cluster, config, datasets, evaluate, shards, train
from dml_dist.cli.parser import Commands, HelpFormatter, console_options
from dml_dist.observability.logging import configure_console

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dml-dist",
        description="Distributed large-batch deep metric learning.",
        formatter_class=HelpFormatter,
        parents=[console_options(default=None)],
    )
    parser.add_argument("--version", action="version", version=f"dml-dist {__version__}")
    commands = Commands(parser.add_subparsers(dest="command", required=True), console_options(argparse.SUPPRESS))
    train.register_train(commands)
    evaluate.register(commands)
    shards.register(commands)
    datasets.register(commands)
    config.register(commands)
    bench.register(commands)
    cluster.register(commands)
    train.register_tune(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_console(args.log_level, args.quiet)
    from dml_dist.train.errors import TrainingStopped

    try:
        return int(args.func(args) or 0)
    except ValueError as err:
        print(f"dml-dist: error: {err}", file=sys.stderr)
        return 2
    except TrainingStopped as err:
        print(f"dml-dist: training stopped: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
