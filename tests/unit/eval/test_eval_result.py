"""The evaluation record of a run: ``eval.json``'s format (string Recall keys) and its round trip."""

from __future__ import annotations

import json
from pathlib import Path

from dml_dist.eval.result import EvalPoint, EvalResult
from dml_dist.eval.retrieval import RetrievalReport


def _result() -> EvalResult:
    report = RetrievalReport(
        recall={1: 0.5, 2: 0.75}, precision_at_1=0.5, r_precision=0.4, map_at_r=0.3, nmi=None, num_queries=8
    )
    report.extra["protocol"] = "leave-one-out"
    history = [EvalPoint(0, {1: 0.25, 2: 0.5}), EvalPoint(10, {1: 0.5, 2: 0.75})]
    return EvalResult(10, {1: 0.5, 2: 0.75}, {1: 0.25, 2: 0.5}, 8, 4, "shards/test", "run-1234", report, history)


def test_eval_json_keeps_its_format_and_reads_back(tmp_path: Path) -> None:
    result = _result()
    result.write(tmp_path / "eval.json")
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["recall"] == {"1": 0.5, "2": 0.75} and data["untrained_recall"] == {"1": 0.25, "2": 0.5}
    assert data["history"][0] == {"step": 0, "recall": {"1": 0.25, "2": 0.5}}
    assert (
        data["metrics"]["recall"] == {"1": 0.5, "2": 0.75} and data["metrics"]["extra"]["protocol"] == "leave-one-out"
    )
    keys = {"step", "recall", "untrained_recall", "num_queries", "num_classes", "eval_shards", "job", "history"}
    assert set(data) == keys | {"metrics"}
    assert EvalResult.read(tmp_path / "eval.json") == result


def test_a_ray_result_without_history_reads_as_the_last_evaluation() -> None:
    summary = {k: v for k, v in _result().to_json().items() if k != "history"}
    read = EvalResult.from_json({**summary, "placement": [], "samples_per_second": 10.0})
    assert read.recall == {1: 0.5, 2: 0.75} and read.history == [] and read.metrics.map_at_r == 0.3
