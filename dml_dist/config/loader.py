"""Load, override and save experiment configs.

``load_config(path, overrides)`` reads YAML with ``yaml.safe_load``, applies ``--set a.b=c``
overrides (values parsed as YAML scalars) and builds the typed sections (pydantic models), which
validate themselves as they are built (each section its own fields, ``ExperimentConfig`` the
rules between sections). The sections are frozen: a later change is a validated copy
(``replaced``). Every user error is a ``ValueError`` that names the field (``loss.alpha``) or the file.

This is the one place a config is checked: ``train``, ``config show`` and ``submit`` all load
through it, and ``config schema`` (``describe.py``) is built from the same models. So the loss's
hyperparameters are checked as the loss section is built, against the loss's constructor, and
numbers follow one rule everywhere (``fields.py``).

``path`` is a YAML file, or the name of a config shipped inside the package
(``dml_dist/configs/NAME.yaml``, e.g. ``quickstart``), so an installed wheel has them too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml

from dml_dist.config.fields import Section
from dml_dist.config.schema import ExperimentConfig

T = TypeVar("T", bound=Section)

BUNDLED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
"""The experiment configs shipped inside the package (the repository's ``configs`` links here)."""


def bundled_config_names() -> list[str]:
    return sorted(p.stem for p in BUNDLED_CONFIGS.glob("*.yaml"))


def resolve_config_path(spec: str | Path) -> Path:
    """A YAML file, or the shipped config named ``spec`` (``quickstart`` -> ``dml_dist/configs/quickstart.yaml``)."""
    path = Path(spec)
    if path.is_file():
        return path
    named = BUNDLED_CONFIGS / f"{path.name}.yaml"
    if path.suffix == "" and len(path.parts) == 1 and named.is_file():
        return named
    raise ValueError(f"config file not found: {path} (shipped configs: {', '.join(bundled_config_names())})")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment file or shipped config name (the defaults when ``path`` is None)
    and validate it."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = resolve_config_path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML: {err}") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        raw = loaded or {}
    raw = apply_overrides(raw, overrides or [])
    return ExperimentConfig(**raw)  # every section validates itself as it is built


def with_overrides(config: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """A new config: ``config`` with ``a.b.c=value`` overrides applied as ``--set`` does, validated."""
    return ExperimentConfig(**apply_overrides(config_to_dict(config), overrides))


def replaced(config: T, changes: dict[str, Any]) -> T:
    """A validated copy of ``config`` (or of one of its sections) with the dotted fields of
    ``changes`` set (``{"model.init_from": None}``): configs are frozen, so every change after
    loading is a copy, and each rebuilt section checks itself again as it is built (a value may
    be a whole section: ``{"data": data_config}``)."""
    fields = {name: getattr(config, name) for name in type(config).model_fields}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        head, dot, rest = key.partition(".")
        if dot:
            nested.setdefault(head, {})[rest] = value
        elif head not in fields:
            raise ValueError(f"{type(config).path + '.' if type(config).path else ''}{head}: unknown key")
        else:
            fields[head] = value
    for head, inner in nested.items():
        fields[head] = replaced(getattr(config, head), inner)
    return type(config)(**fields)  # validated again, unlike ``model_copy(update=...)``


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``a.b.c=value`` applied (value parsed as YAML)."""
    result = _deep_copy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected key=value, for example train.steps=100")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"--set {item!r}: value is not valid YAML: {err}") from err
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"--set {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return result


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The config as plain data, in the same shape the YAML files use."""
    data = config.model_dump()
    loss = data["loss"]
    data["loss"] = {"name": loss["name"], **loss["params"]}
    return data


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (``load_config`` reads it back unchanged)."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


def _deep_copy(raw: dict[Any, Any]) -> dict[str, Any]:
    """A copy of the mappings, keys as strings: a YAML key may be a number (``1: x``), an unknown
    key then, not a ``TypeError`` in building a section from keywords."""
    return {str(k): _deep_copy(v) if isinstance(v, dict) else v for k, v in raw.items()}
