"""The mining study harness (``python -m dml_dist.bench.mining_study``) trains the real loop in one
process, without a Ray Train session, mines, and is exactly reproducible: the same seed gives
the same Recall@1 and losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dml_dist.config import DataConfig
from tests.conftest import REPO, set_args, small_data_settings


def _study(tmp_path: Path, settings: dict[str, object], name: str) -> dict:
    out = tmp_path / f"{name}.json"
    args = [sys.executable, "-m", "dml_dist.bench.mining_study", str(REPO / "configs" / "quickstart.yaml")]
    args += ["--seed", "3", "--steps", "12", "--eval-at", "6,12", "--out", str(out), *set_args(settings)]
    subprocess.run(args, cwd=tmp_path, check=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(out.read_text())


def test_a_mined_study_run_trains_evaluates_and_repeats_exactly(small_data: DataConfig, tmp_path: Path) -> None:
    settings = {**small_data_settings(small_data), "batch.num_classes": 32, "mining.enabled": True}
    settings.update({"mining.rule": "seed_neighbours", "mining.warmup_steps": 2, "mining.ramp_steps": 2})
    first, again = _study(tmp_path, settings, "first"), _study(tmp_path, settings, "again")
    assert set(first["recall"]) == {"6", "12"}
    assert 0.0 < first["recall"]["12"]["1"] <= 1.0
    assert first["mined_steps"] > 0, first  # the service answered, and its answers were used
    assert first["recall"] == again["recall"] and first["loss_by_50"] == again["loss_by_50"]
