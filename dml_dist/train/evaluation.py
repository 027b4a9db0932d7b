"""Held-out evaluation during training (rank 0): Recall@K with faiss, written to ``eval.json``.

At step 0 (the untrained model), every ``train.eval_every`` steps and at the last step, rank 0
embeds the held-out shards and measures retrieval (``eval/heldout.py``). ``eval.json`` holds the
latest result, the untrained one, every metric of the report and the history of Recall@K by
step (a resumed run keeps the history up to its step: ``TrainState.eval_history``); the last step also
writes the gallery of retrievals. A bad held-out sample (undecodable image, corrupt tar member)
is skipped and counted (``metrics.extra.skipped_samples`` in ``eval.json``), never fatal; a
storage error fails the step (``data/bad_data.py``). The last result also reaches Prometheus and
``ray.train.report`` (``train/reporting.py``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dml_dist import run_files
from dml_dist.config.schema import ExperimentConfig
from dml_dist.eval.gallery import write_run_gallery
from dml_dist.eval.heldout import evaluate_shards
from dml_dist.eval.result import EvalPoint, EvalResult
from dml_dist.eval.retrieval import format_recall_table
from dml_dist.observability.metrics import NullMetrics
from dml_dist.train.worker_plan import WorkerPlan


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
        history: list[EvalPoint],
    ):
        self.embedder = embedder
        self.plan = plan
        self.config = config
        self.device = device
        self.run_dir = run_dir
        self.metrics = metrics
        self.eval_history = history  # the TrainState's list (train/train_state.py): a resume refills it
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
        self.eval_history.append(EvalPoint(step, recall))
        self.metrics.observe_eval(recall)
        result = EvalResult(
            step=step,
            recall=recall,
            untrained_recall=self.eval_history[0].recall,
            num_queries=int(labels.shape[0]),
            num_classes=int(np.unique(labels).shape[0]),
            eval_shards=self.plan.eval_shards,
            job=self.plan.job_name,
            metrics=held.report,
            history=list(self.eval_history),
        )
        result.write(self.run_dir / run_files.EVAL)
        self.last_eval = result.to_json()  # Ray reports the JSON form (train/reporting.py)
        table = format_recall_table({"untrained": result.untrained_recall, f"step {step}": recall})
        skipped = held.report.extra.get("skipped_samples", 0)
        said = f", {skipped} bad samples skipped" if skipped else ""
        print(
            f"eval at step {step} ({time.perf_counter() - started:.1f} s, {labels.shape[0]} held-out images{said}):\n"
            f"{table}",
            flush=True,
        )
