"""The record of a run's held-out evaluations: what ``eval.json`` holds and what a run reports.

Rank 0 of a training run evaluates every ``train.eval_every`` steps (``train/loop.py``) and
rewrites ``RUN_DIR/eval.json`` with an ``EvalResult``: the latest Recall@K, the untrained one
(step 0), the history of every evaluation, and every metric of the latest one (a
``RetrievalReport``). The same JSON, less its history, reaches the driver through Ray Train's
result (``dml-dist train`` prints its summary from it).

In Python Recall@K is a ``dict[int, float]``; JSON object keys are strings, so on disk it is
``{"1": ..., "2": ...}``. ``to_json`` / ``from_json`` are the only places that convert.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dml_dist.atomic import write_json_atomic
from dml_dist.eval.retrieval import RetrievalReport


def recall_to_json(recall: dict[int, float]) -> dict[str, float]:
    return {str(k): float(v) for k, v in recall.items()}


def recall_from_json(recall: dict[str, float]) -> dict[int, float]:
    return {int(k): float(v) for k, v in recall.items()}


@dataclass
class EvalPoint:
    """Recall@K at one evaluated step: an entry of the history."""

    step: int
    recall: dict[int, float]

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "recall": recall_to_json(self.recall)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalPoint:
        return cls(step=int(data["step"]), recall=recall_from_json(data["recall"]))


@dataclass
class EvalResult:
    """The latest evaluation of a run, its untrained baseline and its history.

    ``num_queries`` / ``num_classes``: held-out images and classes embedded; ``eval_shards``: the
    held-out shard directory; ``job``: the run's job name (its Prometheus label);
    ``metrics``: every metric of the latest evaluation (``eval/retrieval.py``).
    """

    step: int
    recall: dict[int, float]
    untrained_recall: dict[int, float]
    num_queries: int
    num_classes: int
    eval_shards: str
    job: str
    metrics: RetrievalReport
    history: list[EvalPoint] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The ``eval.json`` object (Recall keys as strings)."""
        return {
            "step": self.step,
            "recall": recall_to_json(self.recall),
            "untrained_recall": recall_to_json(self.untrained_recall),
            "num_queries": self.num_queries,
            "num_classes": self.num_classes,
            "eval_shards": self.eval_shards,
            "job": self.job,
            "history": [point.to_json() for point in self.history],
            "metrics": self.metrics.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalResult:
        """From ``eval.json``, or from a run's Ray result (the same keys among others, no history)."""
        return cls(
            step=int(data["step"]),
            recall=recall_from_json(data["recall"]),
            untrained_recall=recall_from_json(data["untrained_recall"]),
            num_queries=int(data["num_queries"]),
            num_classes=int(data["num_classes"]),
            eval_shards=str(data["eval_shards"]),
            job=str(data["job"]),
            metrics=RetrievalReport.from_json(data["metrics"]),
            history=[EvalPoint.from_json(point) for point in data.get("history", [])],
        )

    def write(self, path: str | Path) -> None:
        write_json_atomic(Path(path), self.to_json())

    @classmethod
    def read(cls, path: str | Path) -> EvalResult:
        return cls.from_json(json.loads(Path(path).read_text()))
