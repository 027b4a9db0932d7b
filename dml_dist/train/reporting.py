"""What a worker tells the outside: its placement, the logged steps, and ``ray.train.report``.

- Placement: every rank prints its node, host and pid; rank 0 writes them all, in rank order, to
  ``placement.json``.
- Log steps (every ``train.log_every`` steps and the last; rank 0): the step's ``StepMetrics``
  row goes to ``metrics.jsonl`` and a progress line to the console.
- Reports: at evaluation and checkpoint steps and the last step every rank calls
  ``ray.train.report`` (a barrier, so all ranks call it at the same steps): the step's figures,
  the last held-out Recall@K and, at the end, the run's summary reach the Ray dashboard's Train
  view, Ray Tune's scheduler and the driver's ``Result``. A report returns when Ray Train's
  controller next polls the workers (``launcher.REPORT_POLL_SECONDS``), so log steps, which may
  come every step, do not report. At checkpoint steps each rank's share of the checkpoint goes
  with it (``train/checkpointer.py``).
- Final files (rank 0): ``embedder.pt`` for ``eval``/``embed`` and ``curves.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dml_dist import run_files, storage
from dml_dist.atomic import write_json_atomic
from dml_dist.distributed import collectives
from dml_dist.observability.progress import format_step_line
from dml_dist.observability.step_metrics import StepMetrics
from dml_dist.train.curves import write_training_curves
from dml_dist.train.storage import node_info


def announce_placement(run_dir: Path, rank: int, node_id: str) -> list[dict[str, Any]]:
    """Every rank's node, host and pid, in rank order (printed by each rank, written by rank 0)."""
    here = {"rank": rank, **node_info(node_id)}
    print(f"[rank {rank}] node {here['node_id'][:12]} host {here['host']} pid {here['pid']}", flush=True)
    placement = collectives.all_gather_object(here)
    if rank == 0:
        write_json_atomic(run_dir / run_files.PLACEMENT, placement)
    return placement


def log_step(
    run_dir: Path, row: StepMetrics, steps: int, elapsed_seconds: float, mining: bool, start_step: int
) -> None:
    """Append the row to ``metrics.jsonl`` and print the progress line (rank 0, at log steps)."""
    run_files.append_jsonl(run_dir / run_files.METRICS, row.to_json())
    line = format_step_line(
        row.step, steps, row.loss, row.samples_per_second, row.step_seconds, elapsed_seconds,
        row.mining.mined if mining else None, start_step=start_step, lr=row.lr, workers=row.workers,
    )  # fmt: skip
    print(line, flush=True)


def ray_metrics(
    row: StepMetrics,
    mean_samples_per_second: float,
    last_eval: dict[str, Any],
    final: bool,
    placement: list[dict[str, Any]],
    run_dir: str,
) -> dict[str, Any]:
    """What Ray sees: the step's figures, the last evaluation, and at the end the run's summary."""
    metrics: dict[str, Any] = {
        "step": row.step,
        "loss": row.loss,
        "samples_per_second": row.samples_per_second,
        "samples_per_second_per_worker": row.samples_per_second_per_worker,
        "lr": row.lr,
        "step_seconds": row.step_seconds,
        "mean_samples_per_second": mean_samples_per_second,
        "fallbacks": row.fallbacks,
    }
    if last_eval:
        metrics.update({f"recall@{k}": v for k, v in last_eval["recall"].items()})
    if final and last_eval:
        summary = {k: v for k, v in last_eval.items() if k not in ("history", "step")}
        metrics.update(summary, placement=placement, run_dir=run_dir)
        metrics["curves"] = _join(run_dir, "curves.png")
    return metrics


def write_final_files(run_dir: Path, embedder: torch.nn.Module, config: dict[str, Any], steps: int) -> None:
    """Weights for ``eval``/``embed`` and the curves, beside the run's other files (rank 0)."""
    run_files.save_embedder(run_dir / run_files.EMBEDDER, embedder, config, steps)
    write_training_curves(run_dir)


def _join(run_dir: str, name: str) -> str:
    """``run_dir/name`` for a directory or a URI (``dml_dist/storage.py``)."""
    return str(storage.join(run_dir, name))
