"""``dml-dist tune``: a tiny real search on Ray Tune whose trials are Ray Train runs; the best
trial's config is a config ``dml-dist train`` accepts, and a bad space fails before any trial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dml_dist.cli import main
from dml_dist.config import DataConfig
from dml_dist.config.loader import load_config
from dml_dist.tune import base_point
from tests.conftest import REPO, set_args, small_data_settings


def _settings(small_data: DataConfig) -> dict[str, object]:
    return {
        **small_data_settings(small_data),
        "batch.num_classes": 32,
        "train.workers": 1,
        "train.eval_every": 4,
        "train.log_every": 2,
        "mining.enabled": False,
        "metrics.enabled": False,
    }


def test_a_tiny_search_writes_results_and_a_trainable_best_config(
    small_data: DataConfig, ray_session, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    # Shard paths relative to the user's directory, as a config in a repository holds them: each
    # trial runs in its own directory, where they would name nothing.
    cache = Path(small_data.cache_dir)
    (train,) = cache.glob("procedural-*/train")
    monkeypatch.chdir(cache)
    relative = {
        "data.train_shards": train.relative_to(cache),
        "data.eval_shards": train.parent.relative_to(cache) / "test",
    }
    space = tmp_path / "space.yaml"
    space.write_text("engine.lr: {loguniform: [1.0e-3, 4.0e-3]}\nloss.temperature: {choice: [0.05, 0.1]}\n")
    out = tmp_path / "search"
    args = ["tune", str(REPO / "configs" / "quickstart.yaml"), "--space", str(space), "--trials", "2"]
    args += ["--steps", "8", "--grace-steps", "4", "--out", str(out), *set_args({**_settings(small_data), **relative})]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["trials"]) == 2  # the base config's point is one of them
    (start,) = [t for t in results["trials"] if t["base_config"]]
    assert start["params"] == {"engine.lr": 0.002, "loss.temperature": 0.1}  # quickstart.yaml's own values
    assert all(0 < t["recall@1"] <= 1 and t["step"] in (4, 6, 8) for t in results["trials"]), results
    best = load_config(out / "best.yaml")
    assert best.engine.lr == pytest.approx(results["best"]["params"]["engine.lr"])
    assert best.loss.params["temperature"] == results["best"]["params"]["loss.temperature"]
    assert best.train.steps == 8 and best.batch.num_classes == 32
    assert best.data.train_shards == str(train)
    assert "| engine.lr | loss.temperature |" in capsys.readouterr().out
    assert len(list(out.glob("trial-*/eval.json"))) == 2


def test_the_base_point_is_the_configs_own_values_when_they_lie_in_the_space() -> None:
    base = load_config(REPO / "configs" / "quickstart.yaml")  # lr 0.002, temperature 0.1, N 320
    inside = {"engine.lr": {"loguniform": [1e-3, 4e-3]}, "loss.temperature": {"choice": [0.05, 0.1]}}
    assert base_point(base, inside) == ({"engine.lr": 0.002, "loss.temperature": 0.1}, "")
    assert base_point(base, {**inside, "batch.num_classes": {"randint": [16, 320]}}) == (None, "batch.num_classes")
    assert base_point(base, {"engine.lr": {"uniform": [3e-3, 4e-3]}}) == (None, "engine.lr")
    assert base_point(base, {"loss.temperature": {"choice": [0.05]}}) == (None, "loss.temperature")


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("engine.lrr: {uniform: [0.1, 0.2]}", "engine.lrr"),
        ("engine.lr: {normal: [0.1, 0.2]}", "engine.lr: expected one of"),
        ("engine.lr: {loguniform: [0, 0.2]}", "loguniform needs low > 0"),
    ],
)
def test_a_bad_space_fails_before_any_trial(
    small_data: DataConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str], space: str, message: str
) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(space + "\n")
    args = ["tune", str(REPO / "configs" / "quickstart.yaml"), "--space", str(path), "--out", str(tmp_path / "o")]
    assert main(args + set_args(_settings(small_data))) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
