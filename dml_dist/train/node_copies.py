"""Node-local copies of a remote storage's files (``s3://``, ``gs://``, anything ``pyarrow.fs`` opens).

Ray Train writes checkpoints to such a storage itself (``storage_path`` is a URI). Everything
else a run reads or writes is a plain file that code opens with ``open()``, so with a URI storage:

- **Run files** (``config.yaml``, ``metrics.jsonl``, ``eval.json``, ``embedder.pt``, ...) are
  written by rank 0 into a :class:`RunMirror`: a node-local directory it creates itself, pushed
  to ``URI/runs/NAME`` after every report and at the end, and pulled first when a run resumes on
  another node. Checkpoints are not part of the mirror (Ray Train owns ``RUN/checkpoints``).
- **Shards**: the driver uploads each shard directory once to ``URI/data/NAME-HASH`` (``HASH`` of
  its manifest; the manifest is uploaded last, so a directory without one is incomplete); each
  worker copies it into node-local scratch (:func:`localize_shards`) before reading by class.
- **The checkpoint to resume from**, chosen by rank 0 (``train/resume.py``), is copied once per
  node into scratch private to the run (:func:`copy_checkpoint_to_node`) and removed after loading.

Reading, writing, listing and joining a location of either kind is ``dml_dist/storage.py``'s job.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from dml_dist import storage
from dml_dist.data.shard_layout import MANIFEST  # a shard directory is complete once it holds this
from dml_dist.distributed import collectives
from dml_dist.run_files import CHECKPOINTS

SCRATCH = "dml-dist"


def scratch_dir(kind: str, key: str) -> Path:
    """A node-local directory for ``key`` (a URI) that this node's workers share."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / SCRATCH / kind / digest


class RunMirror:
    """A node-local copy of a run directory whose home is ``uri`` (see the module doc).

    ``kind`` keeps the driver's mirror apart from rank 0's when both run on one node; ``fresh``
    starts from an empty directory, so files of an earlier run never reach the storage.
    """

    @classmethod
    def of(cls, run_dir: str | os.PathLike[str], fresh: bool, kind: str = "runs") -> RunMirror | None:
        """The mirror of a remote run directory; None for a local one, which is written in place."""
        return None if storage.is_local(run_dir) else cls(str(run_dir), fresh, kind)

    def __init__(self, uri: str, fresh: bool, kind: str = "runs"):
        self.uri = uri
        self.local = scratch_dir(kind, uri)
        if fresh:
            shutil.rmtree(self.local, ignore_errors=True)
        self.local.mkdir(parents=True, exist_ok=True)
        self.pushed: dict[str, Any] = {}  # relative path -> (size, mtime) when last uploaded

    def pull(self) -> None:
        """Replace the local copy by the run's files (not its checkpoints): a resumed run continues its logs."""
        shutil.rmtree(self.local, ignore_errors=True)
        storage.download_dir(self.uri, self.local, skip=(CHECKPOINTS,))
        self.pushed = {}

    def push(self, names: list[str] | None = None) -> None:
        """Upload the run's files that changed since the last push (``names`` only, when given)."""
        if names is None:
            storage.upload_dir(self.local, self.uri, skip=(CHECKPOINTS,), unchanged=self.pushed)
            return
        for name in names:
            storage.write_bytes(storage.join(self.uri, name), (self.local / name).read_bytes())


def publish_shards(local: Path, remote: str) -> str:
    """Upload the shard directory ``local`` to ``REMOTE/data/NAME-HASH`` once; returns that URI."""
    digest = hashlib.sha256((local / MANIFEST).read_bytes()).hexdigest()[:12]
    uri = str(storage.join(remote, "data", f"{local.name}-{digest}"))
    if not storage.exists(storage.join(uri, MANIFEST)):
        storage.upload_dir(local, uri, skip=(MANIFEST,))
        storage.write_bytes(storage.join(uri, MANIFEST), (local / MANIFEST).read_bytes())  # last: marks it complete
    return uri


def localize_shards(location: str, required: bool) -> str | Path:
    """Shards to read on this node: a local ``location`` as it is, else a node-local copy of the
    remote shard directory (copied once per node). A remote location without a manifest is a
    stream (``tar_stream.py``) and read where it is, unless ``required`` (a directory to index).

    Workers on one node may copy at once: each copies into its own directory and renames it into
    place; the loser of that race drops its copy.
    """
    if storage.is_local(location):
        return location
    uri = location
    final = scratch_dir("data", uri)
    if (final / MANIFEST).is_file():
        return final
    if not storage.exists(storage.join(uri, MANIFEST)):
        if not required:
            return location
        raise ValueError(f"data: {uri} is not a complete shard directory (no {MANIFEST})")
    partial = final.with_name(f"{final.name}.{uuid.uuid4().hex[:8]}.partial")
    storage.download_dir(uri, partial)
    try:
        os.replace(partial, final)
    except OSError:  # another worker of this node finished first
        shutil.rmtree(partial, ignore_errors=True)
    return final


def copy_checkpoint_to_node(fs: Any, parent: str, tag: str, run: str, is_copier: bool) -> Path:
    """Checkpoint ``tag`` under ``parent`` on ``fs``, copied once into this node's scratch; returns
    the local parent (``PARENT/TAG`` holds the copy). The scratch is private to the run: keyed by
    ``run``, the run directory's URI (with its file-system options, so two endpoints never share).

    Every rank calls it (it holds a barrier): the node's copier (its first rank,
    ``collectives.first_on_node``) empties the run's scratch and copies the checkpoint into a fresh
    directory that it renames into place, while the node's other ranks wait, so no rank ever reads a copy that another is writing or deleting.
    The caller verifies the copy on every rank before loading (``train/resume.py``).
    """
    local_parent = scratch_dir("checkpoints", run)
    if is_copier:
        shutil.rmtree(local_parent, ignore_errors=True)
        partial = local_parent / f"{tag}.partial"
        storage.copy_down(fs, f"{parent}/{tag}", partial)
        os.replace(partial, local_parent / tag)
    collectives.barrier()
    return local_parent


def drop_node_checkpoint(local_parent: Path, is_copier: bool) -> None:
    """Remove this node's copy once every rank has loaded it (every rank calls it: a barrier)."""
    collectives.barrier()
    if is_copier:
        shutil.rmtree(local_parent, ignore_errors=True)
