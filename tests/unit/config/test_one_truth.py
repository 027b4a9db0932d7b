"""One source of truth for config checks: ``config show``, ``config schema`` and ``train`` accept
and refuse the same files (a loss's hyperparameters by its constructor; integers written ``1e3``)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from dml_dist.cli import main


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["config", "schema"]) == 0
    return jsonschema.Draft202012Validator(json.loads(out.getvalue()))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text",
    [
        "loss: {name: npair_mc, temprature: 0.1}\n",  # misspelled hyperparameter
        "loss: {temprature: 0.1}\n",  # the default loss
        "loss: {name: multi_similarity, temperature: 0.1}\n",  # a parameter of another loss
        "loss: {name: npair_mc, params: {temprature: 0.1}}\n",
        "loss: {name: npair_mc, temperature: warm}\n",  # wrong type
        "train: {steps: 1.5e0}\n",  # not a whole number
    ],
)
def test_what_train_refuses_show_and_schema_refuse(
    tmp_path: Path, text: str, validator: jsonschema.Draft202012Validator, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, text)
    assert main(["config", "show", str(path)]) == 2
    shown = capsys.readouterr().err
    assert shown.startswith("dml-dist: error: ") and shown.count("\n") == 1
    # `train` stops at the same line, before anything starts (no run directory is made).
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == shown and not (tmp_path / "run").exists()
    assert not validator.is_valid(yaml.safe_load(text)), text


@pytest.mark.parametrize(
    ("text", "field", "value"),
    [
        ("train: {steps: 1e3}\n", ("train", "steps"), 1000),
        ("train: {steps: 1.0e+3}\n", ("train", "steps"), 1000),
        ("batch: {num_classes: 64}\ntrain: {steps: 2E+2, workers: 2}\n", ("train", "steps"), 200),
        ("loss: {name: npair_mc, temperature: 5e-2}\n", ("loss", "temperature"), 0.05),
    ],
)
def test_what_the_schema_accepts_show_and_train_accept(
    tmp_path: Path,
    text: str,
    field: tuple[str, str],
    value: float,
    validator: jsonschema.Draft202012Validator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert validator.is_valid(yaml.safe_load(text)), text
    assert main(["config", "show", str(_write(tmp_path, text))]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown[field[0]][field[1]] == value and type(shown[field[0]][field[1]]) is type(value)


def test_each_loss_has_its_own_parameters_in_the_schema(validator: jsonschema.Draft202012Validator) -> None:
    from dml_dist.losses import LOSSES

    branches = {b.get("title"): b for b in validator.schema["properties"]["loss"]["anyOf"]}
    assert set(LOSSES) <= set(branches)
    assert "temperature" in branches["npair_mc"]["properties"]
    assert branches["multi_similarity"]["properties"]["alpha"]["default"] == 2.0
    assert validator.is_valid({"loss": {"name": "multi_similarity", "alpha": 2, "beta": 50, "base": 0.5}})
