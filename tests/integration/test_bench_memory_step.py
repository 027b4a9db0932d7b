"""``dml-dist bench memory-step`` end to end: real training runs of a large batch and of a small
batch with a full cross-batch memory; both sides report their steady-state throughput."""

from __future__ import annotations

import json
import math
from pathlib import Path

from dml_dist.cli import main
from dml_dist.config import DataConfig
from tests.conftest import REPO, set_args, small_data_settings


def test_memory_step_bench_trains_both_sides_and_reports_a_ratio(
    small_data: DataConfig, ray_session, tmp_path: Path
) -> None:
    report_path = tmp_path / "memory-step.json"
    settings = {**small_data_settings(small_data), "train.workers": 2}
    args = ["bench", "memory-step", "--config", str(REPO / "configs" / "quickstart.yaml"), "--steps", "16"]
    args += ["--rounds", "1", "--small-n", "8", "--memory-size", "64", "--large-n", "32"]
    args += ["--json", str(report_path), *set_args(settings)]
    assert main(args) == 0
    report = json.loads(report_path.read_text())
    assert set(report["figures"]) == {"batch", "memory"}
    for figures in report["figures"].values():
        assert figures["steady_steps"] == 16 - 4 - 5  # after the memory fills (64 / 16 rows) and settles
        assert math.isfinite(figures["samples_per_second"]) and figures["samples_per_second"] > 0
    assert math.isfinite(report["samples_per_second_memory_over_batch"])
