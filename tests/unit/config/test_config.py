"""Config loading: typed, validated once, overridable, errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from dml_dist.config import load_config, save_config
from tests.conftest import REPO


def test_quickstart_loads_and_round_trips(tmp_path: Path) -> None:
    config = load_config(REPO / "configs" / "quickstart.yaml")
    assert config.batch.num_classes >= 320 and config.batch.images_per_class == 2
    assert config.loss.name == "npair_mc" and config.loss.params["temperature"] == 0.1
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_overrides_parse_values_as_yaml() -> None:
    config = load_config(
        None, ["train.steps=7", "loss.temperature=null", "model.channels=[4, 8]", "mining.enabled=false"]
    )
    assert config.train.steps == 7 and config.loss.params["temperature"] is None
    assert config.model.channels == [4, 8] and config.mining.enabled is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.stepz=3"], r"train.stepz: unknown key; valid keys: .*steps"),
        (["train.steps=many"], r"train.steps: expected an integer, got 'many'"),
        (
            ["batch.num_classes=321"],
            r"batch.num_classes: the global batch of 321 classes must divide evenly among train.workers=2",
        ),
        (["engine.zero_stage=5"], r"engine.zero_stage: expected 0, 1, 2 or 3, got 5"),
        (["engine.optimizer=sgdx"], r"engine.optimizer: unknown optimizer 'sgdx'"),
        (["mining.random_share=2"], r"mining.random_share: expected a value in \[0, 1\]"),
        (["train"], r"--set 'train': expected key=value"),
    ],
)
def test_bad_values_name_the_field(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)


def test_missing_and_malformed_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="bad.yaml: expected a mapping"):
        load_config(bad)


def test_exponent_floats_without_a_dot_are_numbers() -> None:
    assert load_config(None, ["engine.lr=1e-4"]).engine.lr == 1e-4


def test_with_overrides_gives_a_new_validated_config() -> None:
    from dml_dist.config.loader import with_overrides

    base = load_config(None, ["train.storage=/mnt/shared"])
    changed = with_overrides(base, ["train.steps=7", "loss.temperature=0.2"])
    assert changed == load_config(None, ["train.storage=/mnt/shared", "train.steps=7", "loss.temperature=0.2"])
    assert base.train.steps == 300 and "temperature" not in base.loss.params
    with pytest.raises(ValueError, match=r"^engine\.lr: expected a value > 0"):
        with_overrides(base, ["engine.lr=-1"])


def test_sections_validate_themselves_when_built() -> None:
    from dml_dist.config import EngineConfig, ExperimentConfig, MemoryConfig, MiningConfig, TrainConfig
    from dml_dist.config.loader import replaced

    with pytest.raises(ValueError, match=r"^engine\.lr: expected a value > 0, got -1"):
        EngineConfig(lr=-1.0)
    with pytest.raises(ValueError, match=r"^engine\.precision: expected auto, fp32, bf16 or autocast"):
        replaced(EngineConfig(), {"precision": "fp16"})
    with pytest.raises(ValueError, match=r"^mining\.rule: expected one of"):
        MiningConfig(rule="hardest")
    # rules between two sections: when the whole config is built
    TrainConfig(workers=3)
    with pytest.raises(ValueError, match=r"^batch\.num_classes: the global batch of 320 classes must divide"):
        ExperimentConfig(train=TrainConfig(workers=3))
    with pytest.raises(ValueError, match=r"^memory\.size: expected 0 or at least the global batch of 640 rows"):
        ExperimentConfig(memory=MemoryConfig(size=100))
