"""Resuming a worker from the run's newest intact checkpoint (Ray Train's, or the run directory's).

``ray.train.get_checkpoint()`` names the latest reported checkpoint after Ray Train restarts a
failed worker group, and after ``dml-dist train --resume`` (same run directory, so the same Ray
Train storage and run name). If that checkpoint does not verify, the newest intact one beside it
is used. Rank 0 alone chooses it and broadcasts it, and every rank verifies it before loading
(``_agreed_checkpoint``), so all ranks load the same step. Every rank restores its engine state
and the cross-batch memory; rank 0 also restores the class source (the mining service's state of
the same step), logs the resume to ``resumes.jsonl``, drops the ``metrics.jsonl`` rows after the
step (they are logged again) and a torn last line of either file, and keeps the evaluation
history up to the step (``run_directory.rewind_run_files``). What is restored besides the engine
is the worker's one ``TrainState`` (``train/train_state.py``). On a URI storage the chosen
checkpoint is copied once per node into scratch private to the run, and removed after loading,
and rank 0 first replaces its local mirror of the run directory by the run's files
(``train/node_copies.py``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from dml_dist import run_files, storage
from dml_dist.distributed import collectives
from dml_dist.train import checkpoint, node_copies
from dml_dist.train.run_directory import rewind_run_files
from dml_dist.train.train_state import TrainState
from dml_dist.train.worker_plan import WorkerPlan


def resume(
    engine: Any,
    state: TrainState,
    reported: Any,
    run_dir: Path,
    plan: WorkerPlan,
    mirror: node_copies.RunMirror | None,
    rank: int,
) -> bool:
    """Restore ``engine`` and ``state`` from the run's newest intact checkpoint, if any (see the
    module docstring); returns whether it resumed.

    ``reported`` is the checkpoint Ray Train hands this worker (``ray.train.get_checkpoint()``),
    None for a fresh run and outside Ray Train. ``run_dir`` is where rank 0 writes the run's
    files (``mirror.local`` on a URI storage; the other ranks have no mirror and write no run file).
    """
    # A fresh run's directory holds no checkpoint (the driver refuses one that does), so a
    # sealed checkpoint here is this run's, also one whose report a failure cut short.
    fs, parent = _checkpoint_parent(reported, run_dir, plan.run_dir)
    copier = collectives.first_on_node() if fs is not None else False
    found = _agreed_checkpoint(fs, parent, plan.run_dir, copier)
    if found is None:
        if plan.resume or reported is not None:
            raise RuntimeError(f"no intact checkpoint to resume from in {parent}")
        return False
    checkpoints, good = found
    state.load_state_dict(checkpoint.load(engine, checkpoints, good))
    state.load_files(checkpoints / good.tag, rank)
    if fs is not None:
        node_copies.drop_node_checkpoint(checkpoints, copier)
    # What every rank loaded, read from its own files: agreement is checked, not assumed.
    rank_steps = collectives.all_gather_object(state.step)
    if len(set(rank_steps)) != 1:
        raise RuntimeError(f"ranks resumed from different steps {rank_steps} ({good.tag} was chosen)")
    if rank != 0:
        return True
    print(f"resuming from {parent}/{good.tag} at step {state.step}", flush=True)
    if mirror is not None:
        mirror.pull()
    state.load_eval_history(rewind_run_files(run_dir, state.step))
    run_files.append_jsonl(
        run_dir / run_files.RESUMES, {"resumed_from": state.step, "time": time.time(), "rank_steps": rank_steps}
    )
    return True


def _checkpoint_parent(reported: Any, run_dir: Path, run_location: str) -> tuple[Any, str]:
    """(file system or None for a directory every node mounts, the directory holding the run's
    checkpoints): beside the reported checkpoint, else ``RUN/checkpoints``."""
    if storage.is_local(run_location):
        local = Path(reported.path).parent if reported is not None else run_dir / run_files.CHECKPOINTS
        return None, str(local)
    if reported is not None:
        return reported.filesystem, reported.path.rstrip("/").rsplit("/", 1)[0]
    fs, parent = storage.filesystem(storage.join(run_location, run_files.CHECKPOINTS))
    return fs, parent


def _agreed_checkpoint(fs: Any, parent: str, run: str, copier: bool) -> tuple[Path, checkpoint.GoodCheckpoint] | None:
    """(local directory holding it, the checkpoint) that every rank loads, or None when none is intact
    (``run``: the run directory, which keys a node's copy; ``copier``: this rank makes its node's
    copy, ``collectives.first_on_node``).

    Rank 0 alone picks the newest intact checkpoint (``checkpoint.intact_checkpoints``) and
    broadcasts it. On a URI storage (``fs`` given) rank 0 checks the manifest and sizes in the
    storage, each node copies the checkpoint once (``node_copies.copy_checkpoint_to_node``) and
    every rank checks the copy's SHA-256s; on a shared directory rank 0 checks the SHA-256s and
    every rank the sizes it sees. A problem on any rank skips the checkpoint on all of them: rank 0
    picks the next older one.
    """
    remote = fs is not None
    is_chooser = collectives.rank() == 0
    candidates = checkpoint.intact_checkpoints(parent, fs, hashes=not remote) if is_chooser else iter(())
    while True:
        good = collectives.broadcast_object(next(candidates, None) if is_chooser else None)
        if good is None:
            return None
        local = node_copies.copy_checkpoint_to_node(fs, parent, good.tag, run, copier) if remote else Path(parent)
        problems = collectives.all_gather_object(checkpoint.verify(local / good.tag, hashes=remote))
        if not any(problems):
            return local, good
        if is_chooser:
            said = "; ".join(f"rank {r}: {p}" for r, p in enumerate(problems) if p)
            print(f"checkpoint: skipping {parent}/{good.tag}: {said}", file=sys.stderr, flush=True)
