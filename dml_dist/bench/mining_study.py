"""The mining study: held-out Recall@1 of a selection rule against random classes, at equal steps.

One run trains the real per-worker loop (``train/loop.py``: the same ``Trainer.train_step``,
DeepSpeed engine, loader, loss and held-out evaluation as ``dml-dist train``) in this process as
a world of one rank, with the mining service (``mining/service.py``) called directly instead of
through a Ray actor. The global batch, the learning rate and the data are those of the config:
a one-rank world computes the same loss and gradients as the W-rank one (the parity tests), so
a run is the CLI's run without Ray's start-up (about a minute here) and without the actor's
timeouts (an answer is never late, so a run is exactly reproducible).

    python -m dml_dist.bench.mining_study configs/quickstart.yaml --seed 0 --steps 300 \\
        --eval-at 300 --out runs/study/x.json --set mining.rule=seed_neighbours

The result (``--out``) holds Recall@K at every ``--eval-at`` step, the seconds per step, and
per-step mining figures (mined, hard share, staleness at selection, violation rate of the batch).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dml_dist.config.loader import load_config
from dml_dist.data.datasets import resolve_data
from dml_dist.distributed import collectives
from dml_dist.eval.result import recall_to_json
from dml_dist.mining.answer import MiningAnswer
from dml_dist.mining.client import RandomClasses
from dml_dist.mining.service import MiningService


class LocalMiningClient(RandomClasses):
    """``MiningClient``'s contract over a service in this process (no Ray, no timeout)."""

    def __init__(self, service: MiningService, seed: int, num_classes: int, n: int):
        super().__init__(seed, num_classes, n)
        self.service = service

    def classes_for(self, step: int) -> MiningAnswer:
        # Ask as the Ray client does: t and t + 1 before t trains (the lag the service expects).
        answer = self.service.next_classes(step, self.n)
        self.service.next_classes(step + 1, self.n)
        self.service.next_classes(step + 2, self.n)
        if not answer.mined and answer.reason != "rule":
            self.fallbacks += 1
        return answer

    def peek(self, step: int) -> list[int]:
        return list(self.service.next_classes(step, self.n).classes)

    def publish(self, step: int, class_ids: np.ndarray, emb_CD: np.ndarray) -> None:
        self.service.publish(step, class_ids, emb_CD)

    def save_state(self, path: str, timeout_s: float = 0.0) -> str | None:
        return self.service.save(path)

    def restore_state(self, path: str, timeout_s: float = 0.0) -> int | None:
        return self.service.restore(path)


def run_study(config_path: str, overrides: list[str], seed: int, steps: int, eval_at: list[int]) -> dict[str, Any]:
    """Train ``steps`` steps and evaluate at ``eval_at``; returns the figures (see module docstring)."""
    from dml_dist.train.loop import Trainer
    from dml_dist.train.worker_parts import build_parts
    from dml_dist.train.worker_plan import WorkerPlan

    config = load_config(
        config_path, [*overrides, f"train.seed={seed}", f"train.steps={steps}", "metrics.enabled=false"]
    )
    data = resolve_data(config.data)
    run_dir = Path("runs/study/tmp") / f"{Path(config_path).stem}-{seed}-{time.time_ns()}"
    plan = WorkerPlan(
        config=config,
        train_shards=str(data.train),
        eval_shards=str(data.eval),
        run_dir=str(run_dir),
        job_name="study",
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    collectives.init_local_gloo(0, 1, collectives.free_local_port())
    try:
        # The harness's own parts: no Ray Train session, and the mining service in this process.
        parts = build_parts(plan, in_ray_train=False)
        if config.mining.enabled:
            num_classes = parts.loader.num_classes
            service = MiningService(num_classes, config.model.embedding_dim, config.mining, seed)
            parts = dataclasses.replace(
                parts, classes=LocalMiningClient(service, seed, num_classes, config.batch.num_classes)
            )
        trainer = Trainer(plan, parts)
        rows: list[dict[str, Any]] = []
        evals: dict[int, dict[str, float]] = {}
        started = time.perf_counter()
        for step in range(steps):
            rows.append(trainer.train_step(step, should_log=True).to_json())  # every step: its violation rate
            if step + 1 in eval_at:
                trainer.evaluate(step + 1)
                evals[step + 1] = recall_to_json(trainer.evaluator.eval_history[-1].recall)
                print(f"step {step + 1}: R@1 {evals[step + 1]['1']:.4f}", flush=True)
        seconds = time.perf_counter() - started
    finally:
        collectives.shutdown()
    return {
        "config": config_path,
        "overrides": overrides,
        "seed": seed,
        "steps": steps,
        "recall": {str(k): v for k, v in evals.items()},
        "seconds": seconds,
        "step_seconds_median": float(np.median([r["step_seconds"] for r in rows])),
        "mined_steps": int(sum(bool(r["mined"]) for r in rows)),
        "violation_rate_by_50": _by_window(rows, "violation_rate", 50),
        "negative_similarity_by_50": _by_window(rows, "negative_similarity", 50),
        "staleness_by_50": _by_window(rows, "staleness_at_selection_mean", 50),
        "loss_by_50": _by_window(rows, "loss", 50),
    }


def _by_window(rows: list[dict[str, Any]], key: str, width: int) -> list[float | None]:
    out: list[float | None] = []
    for lo in range(0, len(rows), width):
        values = [r.get(key) for r in rows[lo : lo + width]]
        finite = [float(v) for v in values if v is not None and np.isfinite(v)]
        out.append(round(float(np.mean(finite)), 4) if finite else None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-at", default="", help="comma-separated steps (default: the last)")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    eval_at = [int(s) for s in args.eval_at.split(",") if s] or [args.steps]
    torch.manual_seed(args.seed)
    result = run_study(args.config, args.overrides, args.seed, args.steps, eval_at)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("recall", "seconds", "mined_steps")}), flush=True)


if __name__ == "__main__":
    main()
