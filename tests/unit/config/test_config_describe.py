"""Config discovery: ranges of every numeric field at load, ``config show`` and ``config schema``,
shipped configs by name, and the command line's conventions (--version, defaults in --help)."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from dml_dist.cli import main
from dml_dist.config import ExperimentConfig, load_config
from dml_dist.config.fields import field_bounds
from dml_dist.config.loader import BUNDLED_CONFIGS, bundled_config_names
from tests.conftest import REPO

SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def numeric_fields(cls: type[BaseModel], prefix: str = "") -> dict[str, FieldInfo]:
    """Dotted name -> field, for every int, float and list-of-number field of the schema."""
    names = {}
    for name, f in cls.model_fields.items():
        hint = f.annotation
        inner = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        kind = inner[0] if typing.get_origin(hint) is not list else typing.get_args(hint)[0]
        kind = typing.get_args(kind)[0] if typing.get_origin(kind) is typing.Annotated else kind
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            names.update(numeric_fields(kind, f"{prefix}{name}."))
        elif kind in (int, float):
            names[f"{prefix}{name}"] = f
    return names


def bounds(f: FieldInfo) -> dict[str, float]:
    """The field's constraints, or the minimum it states in the schema (a bound that a rule checks)."""
    extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
    return field_bounds(f) or ({"ge": typing.cast(float, extra["minimum"])} if "minimum" in extra else {})


BOUNDED = {name: bounds(f) for name, f in numeric_fields(ExperimentConfig).items()}


def test_every_numeric_field_has_a_range() -> None:
    missing = [name for name, bound in BOUNDED.items() if not bound]
    assert not missing, f"give these fields a range (Field(ge=...), ...): {missing}"


def _outside(bound: dict[str, float], is_int: bool) -> float:
    low = bound.get("ge", bound.get("gt"))
    if low is not None:
        return low - 1 if is_int or "gt" not in bound else low
    return bound.get("le", bound["lt"]) + 1


# A field whose lower bound is implied by a check of another field names that field instead.
_NAMED_BY = {"data.procedural.num_classes": "data.procedural.num_test_classes"}


@pytest.mark.parametrize("name", sorted(BOUNDED))
def test_a_value_out_of_range_fails_at_load_naming_the_field(name: str) -> None:
    default = ExperimentConfig()
    value = default
    for part in name.split("."):
        value = getattr(value, part)
    is_int = isinstance(value, int) or (isinstance(value, list) and isinstance(value[0], int)) or value is None
    bad = _outside(BOUNDED[name], is_int)
    bad_value = int(bad) if is_int else bad
    text = json.dumps([bad_value] if isinstance(value, list) else bad_value)
    with pytest.raises(ValueError) as err:
        load_config(None, [f"{name}={text}"])
    message = str(err.value)
    assert message.startswith(f"{_NAMED_BY.get(name, name)}:"), message
    assert "\n" not in message


def test_a_negative_learning_rate_is_refused_at_load() -> None:
    with pytest.raises(ValueError, match=r"^engine\.lr: expected a value > 0, got -0\.001$"):
        load_config(REPO / "configs" / "quickstart.yaml", ["engine.lr=-0.001"])
    with pytest.raises(ValueError, match=r"^engine\.lr: expected a value > 0, got nan$"):
        load_config(None, ["engine.lr=.nan"])


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_config_show_loads_back_as_the_same_config(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = ["engine.lr=0.0005", "train.steps=7"]
    assert main(["config", "show", str(path), *(a for o in overrides for a in ("--set", o))]) == 0
    shown = capsys.readouterr().out
    (tmp_path / "shown.yaml").write_text(shown)
    assert load_config(tmp_path / "shown.yaml") == load_config(path, overrides)
    # every field is there, each under its doc
    assert "  # Learning rate.\n  lr: 0.0005\n" in shown
    assert "  # Optimizer steps.\n  steps: 7\n" in shown


def test_config_show_lists_the_losses_unset_defaults_as_comments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--set", "loss.name=multi_similarity", "--set", "loss.alpha=3"]) == 0
    shown = capsys.readouterr().out
    assert "  name: multi_similarity\n" in shown and "  alpha: 3.0\n" in shown  # a float, as the loss takes it
    assert "  # beta: " in shown and "  # base: " in shown


def test_config_schema_validates_every_shipped_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in SHIPPED:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert not errors, (path.name, errors)
    assert not list(validator.iter_errors(yaml.safe_load(Path(REPO / "configs" / "quickstart.yaml").read_text())))
    assert list(validator.iter_errors({"engine": {"lr": -1}}))
    assert list(validator.iter_errors({"train": {"stepz": 3}}))
    assert list(validator.iter_errors({"loss": {"name": "no_such_loss"}}))
    assert schema["properties"]["engine"]["properties"]["lr"]["description"] == "Learning rate."


def test_shipped_configs_live_in_the_package_and_load_by_name() -> None:
    assert (REPO / "configs").resolve() == BUNDLED_CONFIGS
    assert {p.stem for p in SHIPPED} == set(bundled_config_names())
    assert load_config("quickstart") == load_config(REPO / "configs" / "quickstart.yaml")
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'dml_dist = ["configs/*.yaml"]' in pyproject  # in the wheel, not only in the repository
    with pytest.raises(ValueError, match=r"config file not found: nope \(shipped configs: .*quickstart"):
        load_config("nope")


def test_version_and_defaults_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    from dml_dist import __version__

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"dml-dist {__version__}"
    with pytest.raises(SystemExit):
        main(["shards", "--help"])
    assert "(default: 2000)" in capsys.readouterr().out.replace("\n", " ").replace("  ", " ")


def test_bad_config_values_are_one_line_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "quickstart", "--set", "engine.lr=-1"]) == 2
    assert capsys.readouterr().err == "dml-dist: error: engine.lr: expected a value > 0, got -1.0\n"


def test_jobs_take_the_address_from_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    from dml_dist.jobs import resolve_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ValueError, match="--address: .*set RAY_ADDRESS"):
        resolve_address(None)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert resolve_address(None) == "http://127.0.0.1:8265"
    assert resolve_address("http://head:8265") == "http://head:8265"


@pytest.mark.parametrize(
    ("argv", "quiet", "level"),
    [
        (["-q", "config", "schema"], True, None),
        (["config", "schema", "-q"], True, None),
        (["config", "schema"], False, None),
        (["--log-level", "debug", "eval", "RUN"], False, "DEBUG"),
        (["eval", "RUN", "--log-level", "info"], False, "INFO"),
    ],
)
def test_console_options_work_before_and_after_the_command(argv: list[str], quiet: bool, level: str | None) -> None:
    from dml_dist.cli import build_parser

    args = build_parser().parse_args(argv)
    assert (args.quiet, args.log_level) == (quiet, level)
