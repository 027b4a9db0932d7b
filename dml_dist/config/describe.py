"""What a config holds: each field's one-line doc, the resolved config as YAML, its JSON Schema.

The docs are the attribute docstrings of the section dataclasses (``sections.py``,
``data_sections.py``, ``mining_memory.py``: the string literal under each field), read from
their source with ``ast``, so there is one place to write them.

``show_config`` is ``dml-dist config show``: every section and field, set or default, each under
a comment with its doc; the loss section lists the loss's unset hyperparameters as commented
defaults. Loading the output gives back the same config.

``json_schema`` is ``dml-dist config schema``: JSON Schema (draft 2020-12) with each field's
type, default, doc and range (``ranges.py``), unknown keys rejected as the loader does. Point an
editor's YAML support at it (``# yaml-language-server: $schema=dml-dist.schema.json``).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from typing import Any, Union

import yaml

from dml_dist.config.ranges import RANGES
from dml_dist.config.schema import ExperimentConfig
from dml_dist.config.sections import LossConfig

_FLOAT_TEXT = r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"
"""YAML 1.1 (PyYAML) reads ``1e-4`` as a string; the loader accepts it as a number."""
_INTEGER_TEXT = r"^\+?[1-9]\d*[eE]\+?\d+$"
"""An integer written as ``1e3`` (a string to YAML 1.1), as the loader accepts it: a whole
mantissa and a non-negative exponent, so its value is a whole number of at least 10."""


def one_line(text: str | None) -> str:
    return " ".join((text or "").split())


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its attribute docstring, on one line."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = typing.cast(ast.ClassDef, tree.body[0]).body
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = one_line(after.value.value)
    return docs


# ----------------------------------------------------------------------------- config show
def show_config(config: ExperimentConfig, source: str = "defaults") -> str:
    """The resolved config as commented YAML (loads back as the same config)."""
    lines = [
        f"# dml-dist config: {source}, resolved (every field, set or default, with its doc).",
        "# Save it and edit it: `dml-dist train FILE.yaml` loads it back unchanged.",
    ]
    for section in dataclasses.fields(ExperimentConfig):
        value = getattr(config, section.name)
        lines.append("")
        lines.append(f"# {one_line(type(value).__doc__)}")
        if isinstance(value, LossConfig):
            lines += _loss_lines(value)
        else:
            lines += _section_lines(section.name, value, indent=0)
    return "\n".join(lines) + "\n"


def _section_lines(name: str, obj: Any, indent: int) -> list[str]:
    pad = " " * (indent + 2)
    lines = [f"{' ' * indent}{name}:"]
    docs = field_docs(typing.cast(type, type(obj)))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        doc = docs.get(f.name) or (one_line(type(value).__doc__) if dataclasses.is_dataclass(value) else "")
        if doc:
            lines.append(f"{pad}# {doc}")
        if dataclasses.is_dataclass(value):
            lines += _section_lines(f.name, value, indent + 2)
        else:
            lines.append(pad + _yaml_item(f.name, value))
    return lines


def _loss_lines(loss: LossConfig) -> list[str]:
    from dml_dist.losses import LOSSES

    docs = field_docs(LossConfig)
    lines = ["loss:", f"  # {docs['name']}", "  " + _yaml_item("name", loss.name)]
    defaults = {}
    if loss.name in LOSSES:
        signature = inspect.signature(LOSSES[loss.name].__init__)
        defaults = {
            p.name: p.default
            for p in signature.parameters.values()
            if p.name != "self" and p.default is not inspect.Parameter.empty
        }
    lines.append(f"  # hyperparameters of {loss.name} (set here; commented: the loss's defaults)")
    lines += ["  " + _yaml_item(key, value) for key, value in loss.params.items()]
    lines += ["  # " + _yaml_item(key, value) for key, value in defaults.items() if key not in loss.params]
    return lines


def _yaml_item(key: str, value: Any) -> str:
    """``key: value`` on one line, the value in YAML flow style (lists as ``[a, b]``)."""
    text: str = yaml.safe_dump([value], default_flow_style=True, sort_keys=False, width=10_000)
    return f"{key}: {text.strip()[1:-1]}"


# ----------------------------------------------------------------------------- config schema
def json_schema() -> dict[str, Any]:
    """The JSON Schema of an experiment config file."""
    schema = _object_schema(ExperimentConfig, prefix="")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "dml-dist experiment config",
        **schema,
    }


def _object_schema(cls: type, prefix: str) -> dict[str, Any]:
    if cls is LossConfig:
        return _loss_schema()
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    instance = cls()
    properties: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        dotted = f"{prefix}{f.name}"
        prop = _type_schema(hints[f.name], dotted)
        default = getattr(instance, f.name)
        if not dataclasses.is_dataclass(default):
            prop["default"] = default
        if docs.get(f.name):
            prop["description"] = docs[f.name]
        properties[f.name] = prop
    return {
        "type": "object",
        "description": one_line(cls.__doc__),
        "properties": properties,
        "additionalProperties": False,
    }


def _loss_schema() -> dict[str, Any]:
    """``loss: {name: ..., <hyperparameter>: ...}``, or just ``loss: NAME``: one branch per loss,
    its hyperparameters from its constructor's signature (type by annotation, default), others
    rejected as the loader rejects them (``loader._loss_params``)."""
    from dml_dist.losses import LOSSES

    docs = field_docs(LossConfig)
    name = {"type": "string", "enum": sorted(LOSSES), "default": LossConfig.name, "description": docs["name"]}
    branches = [_one_loss_schema(loss, loss == LossConfig.name) for loss in sorted(LOSSES)]
    return {"description": one_line(LossConfig.__doc__), "anyOf": [*branches, name]}


def _one_loss_schema(loss: str, is_default: bool) -> dict[str, Any]:
    """The mapping form of one loss: ``name`` (optional for the default loss), its
    hyperparameters beside it or under ``params``."""
    from dml_dist.losses import LOSSES

    cls = LOSSES[loss]
    hints = typing.get_type_hints(cls.__init__)
    params: dict[str, Any] = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name == "self":
            continue
        prop = _type_schema(hints[p.name], f"loss.{p.name}") if p.name in hints else {}
        if p.default is not inspect.Parameter.empty:
            prop["default"] = p.default
        params[p.name] = prop
    nested = {"type": "object", "properties": params, "additionalProperties": False}
    return {
        "type": "object",
        "title": loss,
        "properties": {"name": {"const": loss}, "params": nested, **params},
        "required": [] if is_default else ["name"],
        "additionalProperties": False,
    }


def _type_schema(hint: Any, dotted: str) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return {"anyOf": [*(_type_schema(a, dotted) for a in inner), {"type": "null"}]}
    if dataclasses.is_dataclass(hint):
        return _object_schema(typing.cast(type, hint), prefix=f"{dotted}.")
    bound = RANGES[dotted].json_schema() if dotted in RANGES else {}
    if origin is list:
        return {"type": "array", "items": {**_type_schema(args[0], f"{dotted}[]"), **bound}}
    if origin is dict:
        return {"type": "object"}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        # ``1e3`` as a string (YAML 1.1) only where every value of the pattern (>= 10) is in range.
        if bound.get("maximum") is None and bound.get("exclusiveMaximum") is None and bound.get("minimum", 0) <= 10:
            return {"anyOf": [{"type": "integer", **bound}, {"type": "string", "pattern": _INTEGER_TEXT}]}
        return {"type": "integer", **bound}
    if hint is float:
        return {"anyOf": [{"type": "number", **bound}, {"type": "string", "pattern": _FLOAT_TEXT}]}
    if hint is str:
        return {"type": "string"}
    return {}
