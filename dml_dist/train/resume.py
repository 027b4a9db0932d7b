"""Resuming a worker from the run's newest intact checkpoint (Ray Train's, or the run directory's).

``ray.train.get_checkpoint()`` names the latest reported checkpoint after Ray Train restarts a
failed worker group, and after ``dml-dist train --resume`` (same run directory, so the same Ray
Train storage and run name). If that checkpoint does not verify, the newest intact one beside it
is used (``checkpoint.latest_good``). Every rank restores its engine state and the cross-batch
memory; rank 0 also restores the class source (the mining service's state of the same step),
logs the resume to ``resumes.jsonl``, drops the ``metrics.jsonl`` rows after the step (they are
logged again) and keeps the evaluation history up to the step. On a URI storage the checkpoints
are copied into node-local scratch, newest first, and rank 0 first replaces its local mirror of
the run directory by the run's files (``train/uri_storage.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dml_dist.eval.result import EvalPoint, EvalResult
from dml_dist.losses.memory import Memory
from dml_dist.mining.client import ClassSource
from dml_dist.train import checkpoint, run_files, uri_storage

if TYPE_CHECKING:
    from dml_dist.train.loop import WorkerPlan


@dataclass
class Resumed:
    """Where a worker starts: step 0 of a fresh run, or a checkpoint's step and counters."""

    step: int = 0
    skipped_steps: int = 0
    eval_history: list[EvalPoint] = field(default_factory=list)
    """Rank 0: ``eval.json``'s history up to ``step``."""


def _reported_checkpoint() -> Any:
    """The checkpoint Ray Train hands this worker; None outside ``trainer.fit`` (the in-process
    study harness, ``bench/mining_study.py``, runs the loop without a Ray Train session)."""
    import ray.train

    try:
        return ray.train.get_checkpoint()
    except RuntimeError as error:
        if "outside of a Ray Train training function" not in str(error):
            raise
        return None


def resume(
    engine: Any,
    memory: Memory,
    classes: ClassSource,
    run_dir: Path,
    plan: WorkerPlan,
    mirror: uri_storage.RunMirror | None,
    rank: int,
) -> Resumed:
    """Restore the checkpoint Ray Train hands back, if any (see the module docstring).

    ``run_dir`` is where rank 0 writes the run's files (``mirror.local`` on a URI storage; the
    other ranks have no mirror and write no run file).
    """
    reported = _reported_checkpoint()
    # A fresh run's directory holds no checkpoint (the driver refuses one that does), so a
    # sealed checkpoint here is this run's, also one whose report a failure cut short.
    checkpoints, good = _latest_good(reported, run_dir, plan.run_dir if uri_storage.is_uri(plan.run_dir) else None)
    if good is None:
        if plan.resume or reported is not None:
            raise RuntimeError(f"no intact checkpoint to resume from in {checkpoints}")
        return Resumed()
    state = checkpoint.load(engine, checkpoints, good)
    resumed = Resumed(int(state["step"]), int(state.get("skipped_steps", 0)))
    memory.load_state_dict(state.get("memory", {}))
    if rank != 0:
        return resumed
    mining_file = checkpoints / good.tag / checkpoint.MINING_STATE
    if mining_file.is_file():
        classes.restore_state(str(mining_file))
    step = resumed.step
    print(f"resuming from {checkpoints / good.tag} at step {step}", flush=True)
    if mirror is not None:
        mirror.pull()
    run_files.append_jsonl(run_dir / run_files.RESUMES, {"resumed_from": step, "time": time.time()})
    run_files.truncate_metrics(run_dir / run_files.METRICS, after_step=step)
    eval_file = run_dir / run_files.EVAL
    if eval_file.is_file():
        resumed.eval_history = [h for h in EvalResult.read(eval_file).history if h.step <= step]
    return resumed


def _latest_good(reported: Any, run_dir: Path, run_uri: str | None) -> tuple[Path, checkpoint.GoodCheckpoint | None]:
    """The local directory holding the newest intact checkpoint, and that checkpoint (or None)."""
    if run_uri is None:
        local = Path(reported.path).parent if reported is not None else run_dir / run_files.CHECKPOINTS
        return local, checkpoint.latest_good(local)
    if reported is not None:
        fs, parent = reported.filesystem, reported.path.rstrip("/").rsplit("/", 1)[0]
    else:
        fs, parent = uri_storage.filesystem(uri_storage.join(run_uri, run_files.CHECKPOINTS))
    found = uri_storage.fetch_latest_good(fs, parent)
    return found if found is not None else (Path(parent), None)
