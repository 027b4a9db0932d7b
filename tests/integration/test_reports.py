"""What reaches Ray Train: a report at every evaluation, every checkpoint and the last step, and
none at the other log steps (a ``ray.train.report`` returns only at the controller's next poll
of the workers, so reporting every logged step cost up to a poll interval per step)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import ray.train

from dml_dist.config import DataConfig
from dml_dist.config.loader import load_config
from dml_dist.train.launcher import REPORT_POLL_SECONDS, run_training
from tests.conftest import REPO, small_data_settings


class RecordReports(ray.train.UserCallback):
    """Appends each report's step, Recall@1 and whether it carried a checkpoint to a JSON-lines
    file (the callback runs in Ray Train's controller, another process)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        row = {"step": metrics[0]["step"], "recall@1": metrics[0].get("recall@1"), "checkpoint": checkpoint is not None}
        with open(self.path, "a") as out:
            out.write(json.dumps(row) + "\n")


def test_reports_at_evaluation_checkpoint_and_last_steps_only(
    small_data: DataConfig, ray_session, tmp_path: Path
) -> None:
    settings = {
        **small_data_settings(small_data),
        "batch.num_classes": 64,
        "train.steps": 12,
        "train.log_every": 1,
        "train.eval_every": 4,
        "train.checkpoint_every": 6,
        "mining.enabled": False,
        "metrics.enabled": False,
    }
    config = load_config(REPO / "configs" / "quickstart.yaml", [f"{k}={v}" for k, v in settings.items()])
    reports, run_dir = tmp_path / "reports.jsonl", tmp_path / "run"

    run_training(config, run_dir, callbacks=[RecordReports(str(reports))])

    rows = [json.loads(line) for line in reports.read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 6, 8, 12], rows
    assert [r["checkpoint"] for r in rows] == [False, True, False, True], rows
    assert all(r["recall@1"] is not None for r in rows), rows
    logged = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 13))
    assert os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S") == REPORT_POLL_SECONDS
