"""``dml-dist bench mining-step`` end to end: real training runs with mining off and on, the "on"
side mining its steady steps; the figures are finite (timings are the bench's job, not a test's)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from dml_dist.cli import main
from dml_dist.config import DataConfig
from tests.conftest import REPO, set_args, small_data_settings


def test_mining_step_bench_trains_both_sides_and_reports_a_ratio(
    small_data: DataConfig, ray_session, tmp_path: Path
) -> None:
    report_path = tmp_path / "mining-step.json"
    settings = {**small_data_settings(small_data), "batch.num_classes": 32, "train.workers": 2}
    args = ["bench", "mining-step", "--config", str(REPO / "configs" / "quickstart.yaml"), "--steps", "24"]
    args += ["--ramp", "4", "--rounds", "1", "--json", str(report_path), *set_args(settings)]
    assert main(args) == 0
    report = json.loads(report_path.read_text())
    assert set(report["median_step_seconds"]) == {"off", "on"}
    assert all(len(medians) == 1 for medians in report["per_round_medians"].values())
    assert math.isfinite(report["ratio_on_over_off"]) and report["ratio_on_over_off"] > 0
    assert report["mined_share_of_steady_steps_on"] > 0.5, report  # the "on" side really mined
