"""Load, override and save experiment configs.

``load_config(path, overrides)`` reads YAML with ``yaml.safe_load``, applies ``--set a.b=c``
overrides (values parsed as YAML scalars) and builds the typed dataclasses, which validate
themselves as they are built (each section its own fields, ``ExperimentConfig`` the rules
between sections). The sections are frozen: a later change is a validated copy (``replaced``). Every user error is a ``ValueError`` that names the field (``loss.alpha``) or the file.

This is the one place a config is checked: ``train``, ``config show`` and ``submit`` all load
through it, and ``config schema`` (``describe.py``) is built from the same types. So the loss's
hyperparameters are checked here, against the loss's constructor (names, types by its
annotations, and the constructor's own value checks), and numbers follow one rule everywhere: an
integer field takes ``1000``, ``1e3`` or ``1000.0`` (a JSON Schema ``integer`` is any number
without a fraction, so refusing ``1e3`` here would disagree with every editor); a float field
takes any number, also ``1e-4``, which YAML 1.1 reads as a string.

``path`` is a YAML file, or the name of a config shipped inside the package
(``dml_dist/configs/NAME.yaml``, e.g. ``quickstart``), so an installed wheel has them too.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from dml_dist.config.schema import ExperimentConfig
from dml_dist.config.sections import LossConfig

T = TypeVar("T")

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
    return from_dict(ExperimentConfig, raw, prefix="")  # every dataclass validates itself as it is built


def with_overrides(config: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """A new config: ``config`` with ``a.b.c=value`` overrides applied as ``--set`` does, validated."""
    return from_dict(ExperimentConfig, apply_overrides(config_to_dict(config), overrides), prefix="")


def replaced(config: T, changes: dict[str, Any]) -> T:
    """A validated copy of ``config`` (or of one of its sections) with the dotted fields of
    ``changes`` set (``{"model.init_from": None}``): configs are frozen, so every change after
    loading is a copy, and each rebuilt section checks itself again as it is built."""
    direct = {key: value for key, value in changes.items() if "." not in key}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        if "." in key:
            head, rest = key.split(".", 1)
            nested.setdefault(head, {})[rest] = value
    for head, inner in nested.items():
        direct[head] = replaced(getattr(config, head), inner)
    return dataclasses.replace(config, **direct)  # type: ignore[type-var]


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
    data = dataclasses.asdict(config)
    loss = data["loss"]
    data["loss"] = {"name": loss["name"], **loss["params"]}
    return data


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (``load_config`` reads it back unchanged)."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


def from_dict(cls: type[T], raw: Any, prefix: str) -> T:
    """Build dataclass ``cls`` from ``raw``, rejecting unknown keys and wrong types."""
    if cls is LossConfig:
        return typing.cast(T, _loss_from_dict(raw, prefix))
    if not isinstance(raw, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ValueError(f"{prefix}{unknown[0]}: unknown key; valid keys: {', '.join(sorted(fields))}")
    kwargs = {name: _convert(hints[name], value, f"{prefix}{name}") for name, value in raw.items()}
    return cls(**kwargs)


def _loss_from_dict(raw: Any, prefix: str) -> LossConfig:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise ValueError(f"{prefix.rstrip('.')}: expected a mapping with a name, got {raw!r}")
    raw = dict(raw)
    params = raw.pop("params", {}) or {}
    name = raw.pop("name", LossConfig.name)
    if not isinstance(name, str):
        raise ValueError(f"{prefix}name: expected a string, got {name!r}")
    return LossConfig(name=name, params=_loss_params(name, {**params, **raw}, prefix))


def _loss_params(name: str, params: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The loss's hyperparameters converted by its constructor's annotations and checked by
    building it once (unknown name or parameter, wrong type or value: ``ValueError`` naming it)."""
    from dml_dist.losses import LOSSES, build_loss

    if name not in LOSSES:
        build_loss(name)  # the registry's message: unknown loss, valid names
    hints = typing.get_type_hints(LOSSES[name].__init__)
    converted = {
        key: _convert(hints[key], value, f"{prefix}{key}") if key in hints else value for key, value in params.items()
    }
    build_loss(name, **converted)
    return converted


def _convert(hint: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for option in inner:  # the first type the value converts to (``pretrained: bool | str | None``)
            try:
                return _convert(option, value, name)
            except ValueError as err:
                errors.append(str(err))
        kinds = " or ".join(getattr(a, "__name__", str(a)) for a in inner)
        raise ValueError(errors[0] if len(errors) == 1 else f"{name}: expected {kinds}, got {value!r}")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, prefix=f"{name}.")  # type: ignore[arg-type]
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{name}: expected a list, got {value!r}")
        return [_convert(args[0], v, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected true or false, got {value!r}")
        return value
    if hint is int:
        return _integer(value, name)
    if hint is float:
        if isinstance(value, str):
            value = _yaml_11_float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{name}: expected a string, got {value!r}")
        return value
    return value


def _integer(value: Any, name: str) -> int:
    """An integer field's value: an int, or a number without a fraction (``1e3``, ``1000.0``)."""
    number = _yaml_11_float(value) if isinstance(value, str) else value
    if isinstance(number, float) and number.is_integer():
        return int(number)
    if isinstance(number, bool) or not isinstance(number, int):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    return number


def _yaml_11_float(text: str) -> str | float:
    try:
        return float(text)
    except ValueError:
        return text


def _deep_copy(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in raw.items()}
