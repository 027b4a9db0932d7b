"""The pieces of the ``dml-dist`` parser that every command module uses: the help format, the
console options and ``Commands``; ``cli/__init__.py`` puts the command modules' parsers together."""

from __future__ import annotations

import argparse
from typing import Any

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
