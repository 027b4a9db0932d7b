"""``RunResult``: the run's last report, read once into typed fields (``train/run_result.py``)."""

from __future__ import annotations

from dml_dist.eval.result import EvalResult
from dml_dist.eval.retrieval import RetrievalReport
from dml_dist.observability.step_metrics import StepMetrics
from dml_dist.train.errors import STOPPED
from dml_dist.train.reporting import ray_metrics
from dml_dist.train.run_result import RunResult


def _row(step: int) -> StepMetrics:
    return StepMetrics(step, 0.5, 200.0, 64, 32, False, 0, 0.3, 0.01, workers=2)


def _last_eval() -> dict:
    report = RetrievalReport(
        recall={1: 0.5, 2: 0.75}, precision_at_1=0.5, r_precision=0.4, map_at_r=0.3, nmi=None, num_queries=8
    )
    return EvalResult(30, {1: 0.5, 2: 0.75}, {1: 0.25, 2: 0.5}, 8, 4, "shards/test", "run-1", report).to_json()


def test_the_final_report_reads_as_a_typed_result() -> None:
    placement = [{"rank": 0, "node_id": "a" * 12, "host": "h", "pid": 1}]
    metrics = ray_metrics(_row(30), 180.0, _last_eval(), final=True, placement=placement, run_dir="/runs/x")
    result = RunResult.from_report(metrics, "/elsewhere", train_seconds=12.5, mining={"selections": 3})
    assert result.run_dir == "/runs/x" and result.step == 30 and result.curves == "/runs/x/curves.png"
    assert result.evaluation is not None and result.evaluation.recall == {1: 0.5, 2: 0.75}
    assert result.evaluation.untrained_recall == {1: 0.25, 2: 0.5} and result.evaluation.num_classes == 4
    assert result.samples_per_second == 180.0  # the mean over the run, not the last step's 200
    assert result.placement == placement and result.mining == {"selections": 3} and result.stop_reason is None


def test_a_run_stopped_on_purpose_carries_its_reason_and_no_evaluation_is_none() -> None:
    metrics = ray_metrics(_row(7), 90.0, {}, final=False, placement=[], run_dir="s3://b/runs/x?scheme=http")
    metrics[STOPPED] = "non-finite loss or gradient: step 8 ..."
    result = RunResult.from_report(metrics, "s3://b/runs/x?scheme=http", train_seconds=3.0, mining=None)
    assert result.stop_reason == "non-finite loss or gradient: step 8 ..." and result.evaluation is None
    assert result.run_dir == "s3://b/runs/x?scheme=http" and result.curves is None and result.mining is None
