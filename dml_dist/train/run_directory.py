"""Whether a run may use a run directory, decided by the driver before it writes anything there.

A run directory belongs to one run (its lease: ``run_lease.py``), and a command never deletes
what another run wrote:

- **A fresh run** needs a new or empty directory: one holding another run's files
  (``metrics.jsonl``, ``config.yaml``, checkpoints, anything else) is refused in one line that
  names them, and nothing in it is touched.
- **``--resume``** needs an intact checkpoint, and the config of the run (``config.yaml``):
  a field that differs (``engine.lr``, ``train.steps``, ``data.train_shards``, ...) is refused
  in one line listing each change, unless ``--allow-changes`` names it (a field, or a whole
  section such as ``loss``). Fields that say where and how often, not what is trained, may
  change freely (``ALWAYS_ALLOWED``). A refused resume leaves ``config.yaml`` as it was.
- **``--resume auto``** (job retries): resume when a checkpoint exists; else start fresh, also
  over the files of an earlier attempt of the same run (same config) that died before its
  first checkpoint.

The default run directory is ``runs/<config name>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``, ... when
that exists), so two runs of one config never meet.

Ray Train keeps its own list of the run's checkpoints (``checkpoint_manager_snapshot.json``)
and refuses to start a run whose list names a checkpoint directory that no longer exists. ``forget_unusable_checkpoints`` drops such entries (and damaged ones) before a
resume, so deleting the newest checkpoint makes the run resume from the one before it.

A worker that resumes at step t rewinds the run's files to t (``rewind_run_files``): a torn last
line of an appended file is cut off, ``metrics.jsonl`` loses the rows after t (they are logged
again) and the evaluation history after t is dropped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from dml_dist import run_files, storage
from dml_dist.config.loader import config_to_dict
from dml_dist.config.schema import ExperimentConfig
from dml_dist.eval.result import EvalPoint, EvalResult
from dml_dist.train import checkpoint
from dml_dist.train.run_lease import LEASE
from dml_dist.train.storage import PROBE_DIR

ALWAYS_ALLOWED = (
    "train.storage",
    "train.max_failures",
    "train.placement",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "data.cache_dir",
    "data.loader_workers",
    "metrics",
)
"""Config fields that may differ on a resume without ``--allow-changes``: where files live and
how often things happen, not what is trained."""


def default_run_dir(base: Path | str) -> Path | str:
    """``base-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``, ... when that already exists."""
    stamped = f"{str(base).rstrip('/')}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, n = stamped, 1
    while storage.exists(candidate):
        n += 1
        candidate = f"{stamped}-{n}"
    local = storage.local_path(candidate)
    return local if local is not None else candidate


def claim(
    run_dir: Path | str, config: ExperimentConfig, resume: bool | str, allow_changes: list[str] | None = None
) -> bool:
    """Check that this run may use ``run_dir`` (see the module docstring); returns whether it
    resumes (``resume``: True, False or ``"auto"``). Raises ``ValueError`` with one line."""
    found = _entries(run_dir)
    has_checkpoints = any(name.startswith(checkpoint.PREFIX) for name in _checkpoint_dirs(run_dir))
    if resume == "auto":
        resume = has_checkpoints
        if not resume and found:  # an earlier attempt of this run, if its config is this one
            check_unchanged(run_dir, config, allow_changes or [], what="--resume auto")
            forget_unusable_checkpoints(run_dir)  # its checkpoints may have been deleted by hand
            return False
    if not resume:
        if has_checkpoints:
            raise ValueError(
                f"--run-dir {run_dir} already holds checkpoints: pass --resume to continue that run, "
                "or choose another --run-dir"
            )
        if found:
            listed = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
            raise ValueError(
                f"--run-dir {run_dir} already holds files of another run ({listed}): choose a new or empty "
                "--run-dir, or pass --resume auto to continue that run"
            )
        return False
    if not has_checkpoints or _latest_complete(run_dir) is None:
        raise ValueError(f"--resume: {run_dir} holds no complete checkpoint to resume from")
    check_unchanged(run_dir, config, allow_changes or [], what="--resume")
    forget_unusable_checkpoints(run_dir)
    return True


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted field -> (saved value, current value) for every field that differs."""
    before, after = _flatten(saved), _flatten(current)
    return {
        key: (before.get(key), after.get(key))
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    }


def check_unchanged(run_dir: Path | str, config: ExperimentConfig, allow_changes: list[str], what: str) -> None:
    """``ValueError`` listing the fields that differ from the run's ``config.yaml`` and are
    neither in ``allow_changes`` nor in ``ALWAYS_ALLOWED``."""
    text = storage.read_text(storage.join(run_dir, run_files.CONFIG))
    if text is None:
        return  # nothing to compare with: a run that died before writing its config
    saved = yaml.safe_load(text) or {}
    allowed = (*ALWAYS_ALLOWED, *allow_changes)
    refused = {
        key: change
        for key, change in config_changes(saved, config_to_dict(config)).items()
        if not any(key == a or key.startswith(a + ".") for a in allowed)
    }
    if refused:
        listed = ", ".join(f"{key} ({old!r} -> {new!r})" for key, (old, new) in refused.items())
        raise ValueError(
            f"{what}: the config differs from the run's {run_files.CONFIG} in {listed}; "
            f"pass --allow-changes {','.join(refused)} to continue with the new values"
        )


def forget_unusable_checkpoints(run_dir: Path | str) -> list[str]:
    """Drop from Ray Train's list of the run's checkpoints (``RUN_DIR/checkpoint_manager_snapshot.json``:
    Ray Train's run directory is the run directory, ``launcher.py``) those whose directories are
    gone or fail their manifest's size check; returns their names.

    A missing one makes Ray Train refuse to start the run (``CheckpointManagerInitializationError``).
    A damaged one would be handed to the workers first, and, once the run saves the same step
    again into the same directory, evicting the old entry (``train.keep_checkpoints``) would
    delete the new checkpoint."""
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    snapshot_path = storage.join(run_dir, CHECKPOINT_MANAGER_SNAPSHOT_FILENAME)
    text = storage.read_text(snapshot_path)
    if text is None:
        return []
    state = json.loads(text)
    names = {r["checkpoint_dir_name"] for r in state["checkpoint_results"]}
    present = {name for name in names if _usable(storage.join(run_dir, *name.split("/")))}
    missing = sorted(names - present)
    if not missing:
        return []
    kept = [
        (result, index)
        for result, index in zip(state["checkpoint_results"], state["checkpoint_report_indices"], strict=True)
        if result["checkpoint_dir_name"] in present
    ]
    state["checkpoint_results"] = [result for result, _ in kept]
    state["checkpoint_report_indices"] = [index for _, index in kept]
    state["latest_checkpoint_result"] = max(kept, key=lambda pair: pair[1])[0] if kept else None
    pending = [
        (result, spec)
        for result, spec in zip(state["pending_training_results"], state["pending_validation_specs"], strict=True)
        if result["checkpoint_dir_name"] in present
    ]
    state["pending_training_results"] = [result for result, _ in pending]
    state["pending_validation_specs"] = [spec for _, spec in pending]
    for key in ("validated", "timed_out_validation", "failed_validation"):
        field = f"{key}_checkpoint_dir_names"
        state[field] = [name for name in state.get(field, []) if name in present]
    storage.write_bytes(snapshot_path, json.dumps(state).encode())
    print(
        f"resume: {', '.join(missing)} gone or damaged; Ray Train's list of checkpoints no longer names them",
        flush=True,
    )
    return missing


def rewind_run_files(run_dir: Path, step: int) -> list[EvalPoint]:
    """Rewind a local run directory (rank 0's, or its mirror) to ``step`` (see the module
    docstring); returns ``eval.json``'s history up to ``step``."""
    # A crash may have torn the last line of an appended file: cut it off before appending again.
    for name in run_files.APPENDED:
        if run_files.drop_torn_tail(run_dir / name):
            print(f"resume: dropped the torn last line of {run_dir / name}", flush=True)
    run_files.truncate_metrics(run_dir / run_files.METRICS, after_step=step)
    eval_file = run_dir / run_files.EVAL
    if not eval_file.is_file():
        return []
    return [point for point in EvalResult.read(eval_file).history if point.step <= step]


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections -> dotted fields (``{"train": {"steps": 6}}`` -> ``{"train.steps": 6}``)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _entries(run_dir: Path | str) -> list[str]:
    """Names directly in the run directory, except this run's own lease and node probes."""
    return [name for name in storage.list_names(run_dir) if name not in (LEASE, PROBE_DIR)]


def _checkpoint_dirs(run_dir: Path | str) -> list[str]:
    return storage.list_dirs(storage.join(run_dir, run_files.CHECKPOINTS))


def _latest_complete(run_dir: Path | str) -> checkpoint.GoodCheckpoint | None:
    """The newest checkpoint whose manifest and file sizes check (the workers also check the
    SHA-256s of the one they load: the driver does not read every byte a second time)."""
    fs, parent = storage.filesystem(storage.join(run_dir, run_files.CHECKPOINTS))
    return checkpoint.latest_good(parent, fs, hashes=False)


def _usable(directory: Path | str) -> bool:
    """The checkpoint directory exists and its manifest's files have their sizes."""
    if not storage.exists(directory):
        return False
    fs, path = storage.filesystem(directory)
    return checkpoint.verify(path, fs, hashes=False) is None
