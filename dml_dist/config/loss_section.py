"""The loss section of an experiment config: the loss by name, any other key a hyperparameter
of that loss (``loss: {name: multi_similarity, alpha: 2}``, or just ``loss: NAME``).

The hyperparameters are checked as the section is built, against the loss's constructor: names,
types by its annotations (converted as any config field, ``fields.convert``), and the
constructor's own value checks, by building the loss once.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import Field, model_validator

from dml_dist.config.fields import Section, Str, convert


class LossConfig(Section):
    """The loss, chosen by name; any other key is a hyperparameter of that loss."""

    path = "loss"

    name: Str = "npair_mc"
    """Registered loss name (see ``dml_dist.losses.LOSSES``)."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Hyperparameters passed to the loss constructor (YAML: keys beside ``name``)."""

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, raw: Any) -> Any:
        """``loss: NAME`` or ``{name: NAME, HYPERPARAMETER: value, ...}`` (also under ``params``),
        the hyperparameters converted and checked (``ValueError`` naming one: ``loss.alpha``)."""
        if isinstance(raw, LossConfig):
            return raw
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, dict):
            raise ValueError(f"loss: expected a mapping with a name, got {raw!r}")
        raw = dict(raw)
        params = raw.pop("params", None) or {}
        if not isinstance(params, dict):
            raise ValueError(f"loss.params: expected a mapping, got {params!r}")
        name = raw.pop("name", "npair_mc")
        if not isinstance(name, str):
            return {"name": name}  # the field's own error: expected a string
        return {"name": name, "params": _loss_params(name, {**params, **raw})}


def _loss_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    from dml_dist.losses import LOSSES, build_loss

    if name not in LOSSES:
        build_loss(name)  # the registry's message: unknown loss, valid names
    hints = typing.get_type_hints(LOSSES[name].__init__)
    converted = {
        key: convert(hints[key], value, f"loss.{key}") if key in hints else value for key, value in params.items()
    }
    build_loss(name, **converted)
    return converted
