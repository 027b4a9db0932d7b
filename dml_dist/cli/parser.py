"""The ``dml-dist`` parser: top-level options, and each command module's parsers put together."""

from __future__ import annotations

import argparse
from typing import Any

from dml_dist import __version__
from dml_dist.observability.logging import LEVELS


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, except where there is none to show (None, off, [])."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, []) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def console_options(default: Any) -> argparse.ArgumentParser:
    """``--log-level`` and ``-q``, accepted before and after the command's name (a command's
    parser has ``default=SUPPRESS``, so it keeps what was given before the name)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        type=str.upper,
        choices=LEVELS,
        default=default,
        help="level of the libraries' loggers (Ray, DeepSpeed, torch, faiss); default WARNING, "
        "DEBUG or INFO also show the known warnings that are otherwise filtered",
    )
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
        help="quiet: no progress bars, and libraries at ERROR (our own lines and results stay)",
    )
    return common


class Commands:
    """Adds the parsers of (sub)commands: the help is also the description, defaults are shown,
    and the console options are accepted after the command's name."""

    def __init__(self, sub: Any, common: argparse.ArgumentParser):
        self.sub, self.common = sub, common

    def add(self, name: str, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self.sub.add_parser(
            name, help=help, description=help, formatter_class=HelpFormatter, parents=[self.common]
        )
        return parser

    def nested(self, parser: argparse.ArgumentParser, dest: str) -> Commands:
        """The subcommands of ``parser`` (``dml-dist config show``, ``dml-dist bench losses``)."""
        return Commands(parser.add_subparsers(dest=dest, required=True), self.common)


def build_parser() -> argparse.ArgumentParser:
    from dml_dist.cli import bench, cluster, config, datasets, evaluate, shards, train

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
