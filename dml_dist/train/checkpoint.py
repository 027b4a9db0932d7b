"""Checkpoints that a reader never accepts half-written, and that load without unpickling code.

Checkpoints go through Ray Train. At a checkpoint step every rank saves its DeepSpeed files
(model, its optimizer partition, the ``TrainState``'s ``client_state``: ``train/train_state.py``)
into node-local scratch, rank 0 adds the mining service's state (``mining_state.npz``), every
rank hashes its files, and rank 0 writes ``complete.json``: the step and the size and SHA-256 of every file of every rank. Each rank
then hands its directory to ``ray.train.report(..., checkpoint=...)``, which merges them into
one directory of the run's storage, ``RUN_DIR/checkpoints/step-NNNNNN/``, and keeps the newest
``train.keep_checkpoints`` (Ray's ``CheckpointConfig``). So engine state of every rank and the
mining bank of the same step sit in one sealed directory: a resume never pairs them across steps.

On a restart, ``ray.train.get_checkpoint()`` names the latest reported checkpoint; a checkpoint
without the manifest, or whose files do not match it (truncated, corrupted, deleted), is
skipped by ``intact_checkpoints`` with a message naming the problem, and the previous good one
is used. That check is written once, over a ``pyarrow.fs`` file system, so a shared directory
and a URI storage are judged alike; ``train/resume.py`` has rank 0 choose and every rank verify.

Loading goes through ``SafeCheckpointEngine``: ``torch.load(weights_only=True)`` with an
explicit allowlist of the few DeepSpeed classes its files contain, instead of DeepSpeed's
default ``weights_only=False`` (which would run arbitrary pickled code from a tampered file).
The mining state is the service's own ``.npz`` (``mining/service_state.py``).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dml_dist.atomic import write_json_atomic
from dml_dist.distributed import collectives
from dml_dist.train.train_state import TrainState

MANIFEST = "complete.json"
PREFIX = "step-"


@dataclass(frozen=True)
class GoodCheckpoint:
    tag: str
    step: int


def tag_for(step: int) -> str:
    return f"{PREFIX}{step:06d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(directory)): p for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST
    }


def file_hashes(directory: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file under ``directory`` (the manifest excluded)."""
    return {name: {"size": p.stat().st_size, "sha256": _sha256(p)} for name, p in _files(directory).items()}


def write_manifest(directory: Path, step: int, files: dict[str, dict[str, Any]] | None = None) -> None:
    """Record every file of a finished checkpoint (``files``: of every rank); written atomically, last."""
    files = file_hashes(directory) if files is None else files
    write_json_atomic(directory / MANIFEST, {"step": step, "files": files}, indent=1)


def verify(directory: Path | str, fs: Any = None, hashes: bool = True) -> str | None:
    """None when the checkpoint is complete and intact, else what is wrong with it.

    ``directory`` is on ``fs`` (a ``pyarrow.fs`` file system; None: this machine's). Every file
    the manifest lists must exist with its size and, with ``hashes``, its SHA-256.
    """
    return _check(*_on(fs, directory), hashes)[0]


def intact_checkpoints(parent: Path | str, fs: Any = None, hashes: bool = True) -> Iterator[GoodCheckpoint]:
    """The intact checkpoints under ``parent`` (on ``fs``, as in ``verify``), newest first, saying
    which newer ones were skipped and why. The one definition of "latest intact checkpoint" for a
    shared directory and a URI storage alike (``latest_good``; ``train/resume.py``)."""
    import pyarrow.fs as pafs

    fs, root = _on(fs, parent)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    tags = sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith(PREFIX))
    for tag in reversed(tags):
        problem, step = _check(fs, f"{root}/{tag}", hashes)
        if problem is None:
            yield GoodCheckpoint(tag, step)
        else:
            print(f"checkpoint: skipping {root}/{tag}: {problem}", file=sys.stderr, flush=True)


def latest_good(parent: Path | str, fs: Any = None, hashes: bool = True) -> GoodCheckpoint | None:
    """The newest intact checkpoint under ``parent`` (``intact_checkpoints``), or None."""
    return next(intact_checkpoints(parent, fs, hashes), None)


def _on(fs: Any, where: Path | str) -> tuple[Any, str]:
    """(file system, path on it without a trailing slash): this machine's for ``fs=None``."""
    if fs is not None:
        return fs, str(where).rstrip("/")
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem(), str(Path(where).absolute())


def _check(fs: Any, root: str, hashes: bool) -> tuple[str | None, int]:
    """(what is wrong with the checkpoint at ``root`` or None, its step from the manifest)."""
    import pyarrow.fs as pafs

    if fs.get_file_info(f"{root}/{MANIFEST}").type != pafs.FileType.File:
        return "no complete.json (the save did not finish)", 0
    with fs.open_input_stream(f"{root}/{MANIFEST}") as stream:
        try:
            manifest = json.loads(stream.read())
        except json.JSONDecodeError:
            return "complete.json is not valid JSON", 0
    listed = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    sizes = {i.path[len(root) :].lstrip("/"): i.size for i in listed if i.type == pafs.FileType.File}
    for name, expected in manifest["files"].items():
        if name not in sizes:
            return f"{name} is missing", 0
        if sizes[name] != expected["size"]:
            return f"{name} has {sizes[name]} bytes, expected {expected['size']} (truncated?)", 0
        if hashes and _sha256_on(fs, f"{root}/{name}") != expected["sha256"]:
            return f"{name} does not match its checksum (corrupted)", 0
    return None, int(manifest["step"])


def _sha256_on(fs: Any, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def has_checkpoints(checkpoint_dir: Path) -> bool:
    return checkpoint_dir.is_dir() and any(p.name.startswith(PREFIX) for p in checkpoint_dir.iterdir())


def save_local(engine: Any, state: TrainState, scratch: Path) -> Path:
    """Write this rank's share of the checkpoint of ``state.step`` to ``scratch/step-NNNNNN`` and seal it.

    Every rank calls this (it holds collectives): each saves its DeepSpeed files with the
    state's ``client_state``, rank 0 also the state's files (the mining state, nothing when
    mining is off) and the manifest of every rank's files. Returns the directory to report to
    Ray Train.
    """
    tag = tag_for(state.step)
    engine.save_checkpoint(str(scratch), tag=tag, client_state=state.state_dict(), save_latest=False)
    directory = scratch / tag
    rank = collectives.rank()
    state.save_files(directory, rank)
    every_rank = collectives.all_gather_object(file_hashes(directory))
    if rank == 0:
        files: dict[str, dict[str, Any]] = {}
        for share in every_rank:
            files.update(share)
        write_manifest(directory, state.step, files)
    return directory


def load(engine: Any, checkpoint_dir: Path, good: GoodCheckpoint) -> dict[str, Any]:
    """Restore engine state (model, optimizer, scheduler) from ``good``; returns the client state."""
    use_safe_loading(engine)
    _, client_state = engine.load_checkpoint(str(checkpoint_dir), tag=good.tag)
    return dict(client_state or {})


def use_safe_loading(engine: Any) -> None:
    """Swap the engine's checkpoint engine for ``SafeCheckpointEngine`` (same files, safe load)."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class SafeCheckpointEngine(TorchCheckpointEngine):  # type: ignore[misc, valid-type]
        def load(self, path: str, map_location: Any = None) -> Any:
            with torch.serialization.safe_globals(_deepspeed_safe_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)

    current = engine.checkpoint_engine
    if not isinstance(current, TorchCheckpointEngine) or type(current).__name__ == "SafeCheckpointEngine":
        return
    safe = SafeCheckpointEngine.__new__(SafeCheckpointEngine)
    safe.__dict__.update(current.__dict__)
    engine.checkpoint_engine = safe


def _deepspeed_safe_globals() -> list[Any]:
    """Plain data classes that DeepSpeed puts in its checkpoint files (no code runs on load)."""
    import argparse
    from collections import OrderedDict, defaultdict

    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [OrderedDict, defaultdict, argparse.Namespace, LossScaler, ZeroStageEnum, fragment_address, dict, list]
