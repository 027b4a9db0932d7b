"""Held-out evaluation during training (rank 0): Recall@K with faiss, written to ``eval.json``.

At step 0 (the untrained model), every ``train.eval_every`` steps and at the last step, rank 0
embeds the held-out shards and measures retrieval (``eval/heldout.py``). ``eval.json`` holds the
latest result, the untrained one, every metric of the report and the history of Recall@K by
step (a resumed run keeps the history up to its step, ``train/resume.py``); the last step also
writes the gallery of retrievals. The last result also reaches Prometheus and
``ray.train.report`` (``train/reporting.py``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dml_dist.atomic import write_json_atomic
from dml_dist.config.schema import ExperimentConfig
from dml_dist.eval.heldout import evaluate_shards, write_run_gallery
from dml_dist.eval.retrieval import format_recall_table
from dml_dist.observability.metrics import NullMetrics
from dml_dist.train import run_files

if TYPE_CHECKING:
    from dml_dist.train.loop import WorkerPlan


class HeldOutEvaluator:
    """Evaluates the embedder on the run's held-out shards and keeps the history."""

    def __init__(
        self,
        embedder: torch.nn.Module,
        plan: WorkerPlan,
        config: ExperimentConfig,
        device: torch.device,
        run_dir: Path,
        metrics: NullMetrics,
    ):
        self.embedder = embedder
        self.plan = plan
        self.config = config
        self.device = device
        self.run_dir = run_dir
        self.metrics = metrics
        self.eval_history: list[dict[str, Any]] = []
        self.last_eval: dict[str, Any] = {}

    def evaluate(self, step: int) -> None:
        """Held-out Recall@K with faiss; writes eval.json (rank 0 only)."""
        started = time.perf_counter()
        held = evaluate_shards(
            self.embedder,
            self.plan.eval_shards,
            self.config.data,
            self.config.eval,
            self.device,
            self.config.train.seed,
        )
        labels, recall = held.labels, held.report.recall  # every metric: eval.json "metrics" (eval/retrieval.py)
        if step == self.config.train.steps:
            write_run_gallery(self.run_dir, held, self.plan.eval_shards, self.config)
        self.eval_history.append({"step": step, "recall": {str(k): v for k, v in recall.items()}})
        self.metrics.observe_eval(recall)
        untrained = self.eval_history[0]["recall"]
        result = {
            "step": step,
            "recall": {str(k): v for k, v in recall.items()},
            "untrained_recall": untrained,
            "num_queries": int(labels.shape[0]),
            "num_classes": int(np.unique(labels).shape[0]),
            "eval_shards": self.plan.eval_shards,
            "job": self.plan.job_name,
            "history": self.eval_history,
            "metrics": held.report.as_dict(),
        }
        write_json_atomic(self.run_dir / run_files.EVAL, result)
        self.last_eval = result
        table = format_recall_table({"untrained": {int(k): v for k, v in untrained.items()}, f"step {step}": recall})
        print(
            f"eval at step {step} ({time.perf_counter() - started:.1f} s, {labels.shape[0]} held-out images):\n{table}",
            flush=True,
        )
