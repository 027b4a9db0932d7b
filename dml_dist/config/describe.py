"""What a config holds: each field's one-line doc, the resolved config as YAML, its JSON Schema.

The docs are the attribute docstrings of the sections (``sections.py``, ``data_sections.py``,
``mining_memory.py``, ``loss_section.py``: the string literal under each field), which pydantic
keeps as each field's description, so there is one place to write them.

``show_config`` is ``dml-dist config show``: every section and field, set or default, each under
a comment with its doc; the loss section lists the loss's unset hyperparameters as commented
defaults. Loading the output gives back the same config.

``json_schema`` is ``dml-dist config schema``: pydantic's JSON Schema (draft 2020-12) of
``ExperimentConfig``, with each field's type, default, doc and range and unknown keys rejected,
written for editors: sections inline, numbers also as the strings the loader reads (``1e-4``),
and the loss section as the YAML writes it (its hyperparameters beside ``name``, by loss).
Point an editor's YAML support at it (``# yaml-language-server: $schema=dml-dist.schema.json``).
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, NoDefault

from dml_dist.config.fields import config_type
from dml_dist.config.loss_section import LossConfig
from dml_dist.config.schema import ExperimentConfig

_FLOAT_TEXT = r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"
"""YAML 1.1 (PyYAML) reads ``1e-4`` as a string; the loader accepts it as a number."""
_INTEGER_TEXT = r"^\+?[1-9]\d*[eE]\+?\d+$"
"""An integer written as ``1e3`` (a string to YAML 1.1), as the loader accepts it: a whole
mantissa and a non-negative exponent, so its value is a whole number of at least 10."""


def one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def field_docs(cls: type[BaseModel]) -> dict[str, str]:
    """Field name -> its attribute docstring, on one line."""
    return {name: one_line(f.description) for name, f in cls.model_fields.items() if f.description}


# ----------------------------------------------------------------------------- config show
def show_config(config: ExperimentConfig, source: str = "defaults") -> str:
    """The resolved config as commented YAML (loads back as the same config)."""
    lines = [
        f"# dml-dist config: {source}, resolved (every field, set or default, with its doc).",
        "# Save it and edit it: `dml-dist train FILE.yaml` loads it back unchanged.",
    ]
    for name in ExperimentConfig.model_fields:
        value = getattr(config, name)
        lines.append("")
        lines.append(f"# {one_line(type(value).__doc__)}")
        if isinstance(value, LossConfig):
            lines += _loss_lines(value)
        else:
            lines += _section_lines(name, value, indent=0)
    return "\n".join(lines) + "\n"


def _section_lines(name: str, obj: BaseModel, indent: int) -> list[str]:
    pad = " " * (indent + 2)
    lines = [f"{' ' * indent}{name}:"]
    docs = field_docs(type(obj))
    for field in type(obj).model_fields:
        value = getattr(obj, field)
        doc = docs.get(field) or (one_line(type(value).__doc__) if isinstance(value, BaseModel) else "")
        if doc:
            lines.append(f"{pad}# {doc}")
        if isinstance(value, BaseModel):
            lines += _section_lines(field, value, indent + 2)
        else:
            lines.append(pad + _yaml_item(field, value))
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
    schema = ExperimentConfig.model_json_schema(schema_generator=_WithFactoryDefaults)
    definitions = schema.pop("$defs", {})
    schema = _for_editors(schema, definitions)
    schema["properties"]["loss"] = _loss_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "dml-dist experiment config", **schema}


class _WithFactoryDefaults(GenerateJsonSchema):
    """Lists' and mappings' defaults too (pydantic leaves out a ``default_factory``'s); a section's
    default is its fields' defaults."""

    def get_default_value(self, schema: Any) -> Any:  # pydantic_core's WithDefaultSchema
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return super().get_default_value(schema)
        value = factory()
        return NoDefault if isinstance(value, BaseModel) else value


_BOUND_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _for_editors(node: Any, definitions: dict[str, Any]) -> Any:
    """``node`` with sections inline (no ``$ref``), docs on one line, no titles, and a number
    also accepted as the string YAML 1.1 reads it as (``1e-4``; an integer ``1e3``)."""
    if isinstance(node, list):
        return [_for_editors(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _for_editors(definitions[node["$ref"].rsplit("/", 1)[-1]], definitions)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _for_editors(prop, definitions) for name, prop in value.items()}
        elif key == "description":
            out[key] = one_line(value)
        elif key in ("default", "const", "enum"):
            out[key] = value
        elif key != "title":
            out[key] = _for_editors(value, definitions)
    if out.get("type") in ("integer", "number"):
        typed = {key: out.pop(key) for key in ("type", *_BOUND_KEYS) if key in out}
        if typed["type"] == "number":
            return {"anyOf": [typed, {"type": "string", "pattern": _FLOAT_TEXT}], **out}
        # ``1e3`` as a string (YAML 1.1) only where every value of the pattern (>= 10) is in range.
        if "maximum" not in typed and "exclusiveMaximum" not in typed and typed.get("minimum", 0) <= 10:
            return {"anyOf": [typed, {"type": "string", "pattern": _INTEGER_TEXT}], **out}
        return {**typed, **out}
    return out


def _loss_schema() -> dict[str, Any]:
    """``loss: {name: ..., <hyperparameter>: ...}``, or just ``loss: NAME``: one branch per loss,
    its hyperparameters from its constructor's signature (type by annotation, default), others
    rejected as the loader rejects them (``LossConfig``)."""
    from dml_dist.losses import LOSSES

    docs = field_docs(LossConfig)
    default = LossConfig.model_fields["name"].default
    name = {"type": "string", "enum": sorted(LOSSES), "default": default, "description": docs["name"]}
    branches = [_one_loss_schema(loss, loss == default) for loss in sorted(LOSSES)]
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
        prop = _for_editors(TypeAdapter(config_type(hints[p.name])).json_schema(), {}) if p.name in hints else {}
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
