"""One worker's checkpoints: the engine and the run's ``TrainState``, registered once.

A checkpoint holds two stateful parts: the DeepSpeed engine (model, this rank's optimizer
partition, scheduler) and the ``TrainState`` (step, skipped steps, cross-batch memory, class
source; ``train/train_state.py``). The worker's builder (``train/worker_parts.py``) hands both to
one ``Checkpointer``; nothing else assembles checkpoint state.

- ``restore``: at start, the newest intact checkpoint, if any (``train/resume.py``).
- ``report``: at a checkpoint step, this rank's share of the checkpoint of ``state.step``, saved
  into node-local scratch and sealed (``train/checkpoint.py``), goes with ``ray.train.report``;
  Ray Train merges the ranks' shares into ``RUN_DIR/checkpoints/step-NNNNNN``.

``reported_checkpoint`` is how the worker learns the checkpoint Ray Train hands back after a
restart: ``ray.train.get_checkpoint`` inside Ray Train, a function returning None where the loop
runs without a Ray Train session (the study harness, ``bench/mining_study.py``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dml_dist import run_files
from dml_dist.train import checkpoint, node_copies
from dml_dist.train.resume import resume
from dml_dist.train.train_state import TrainState
from dml_dist.train.worker_plan import WorkerPlan


class Checkpointer:
    """Saves and restores ``engine`` and ``state`` together (see the module docstring)."""

    def __init__(
        self,
        engine: Any,
        state: TrainState,
        plan: WorkerPlan,
        run_dir: Path,
        mirror: node_copies.RunMirror | None,
        rank: int,
        reported_checkpoint: Callable[[], Any],
    ):
        self.engine = engine
        self.state = state
        self.plan = plan
        self.run_dir = run_dir
        self.mirror = mirror
        self.rank = rank
        self.reported_checkpoint = reported_checkpoint

    def restore(self) -> bool:
        """Load the newest intact checkpoint into the engine and the state; False for a fresh run."""
        reported = self.reported_checkpoint()
        return resume(self.engine, self.state, reported, self.run_dir, self.plan, self.mirror, self.rank)

    def report(self, metrics: dict[str, Any]) -> None:
        """``ray.train.report`` of ``metrics`` with this rank's share of the checkpoint of
        ``state.step``. Every rank calls it at the same steps (it holds collectives)."""
        import ray.train

        with tempfile.TemporaryDirectory(prefix="dml-dist-checkpoint-") as scratch:
            directory = checkpoint.save_local(self.engine, self.state, Path(scratch))
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(str(directory)),
                # Ray Train's run directory is RUN_DIR (launcher._ray_train_location): checkpoints in RUN_DIR/checkpoints.
                checkpoint_dir_name=f"{run_files.CHECKPOINTS}/{directory.name}",
            )
