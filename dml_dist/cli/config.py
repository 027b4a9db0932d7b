"""``dml-dist config show`` (a resolved config as commented YAML) and ``dml-dist config schema``
(the JSON Schema of config files)."""

from __future__ import annotations

import argparse
import json

from dml_dist.cli.parser import Commands


def register(commands: Commands) -> None:
    config = commands.add("config", "show a resolved config with every default and its doc, or the JSON Schema")
    sub = commands.nested(config, "config_command")
    show = sub.add("show", "the resolved config as commented YAML (loads back as the same config)")
    show.add_argument(
        "config", nargs="?", help="experiment YAML or shipped config name (default: the built-in defaults)"
    )
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    show.set_defaults(func=cmd_config_show)
    schema = sub.add("schema", "the JSON Schema of config files (for editors)")
    schema.set_defaults(func=cmd_config_schema)


def cmd_config_show(args: argparse.Namespace) -> int:
    from dml_dist.config.describe import show_config
    from dml_dist.config.loader import load_config, resolve_config_path

    config = load_config(args.config, list(args.set))
    source = str(resolve_config_path(args.config)) if args.config else "the built-in defaults"
    if args.set:
        source += " with " + " ".join(f"--set {item}" for item in args.set)
    print(show_config(config, source), end="")
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    from dml_dist.config.describe import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0
