"""A storage given as a URI (``s3://``, ``gs://``, anything ``pyarrow.fs`` opens): mirrors and copies.

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

``exists``, ``read_bytes``, ``write_bytes`` and ``list_dirs`` take an absolute local path as well
(``pyarrow.fs`` opens a path without a scheme on the local file system), so a caller that only
reads or writes a file needs no "is this a URI?" branch (``train/storage.py``'s probes).

A URI may carry ``pyarrow`` options as a query (``s3://bucket/dml?endpoint_override=host:9000``);
the query belongs to the file system, so :func:`join` puts path parts before it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from dml_dist.data.shard_layout import MANIFEST  # a shard directory is complete once it holds this
from dml_dist.distributed import collectives
from dml_dist.run_files import CHECKPOINTS

SCRATCH = "dml-dist"


def is_uri(value: str | os.PathLike[str] | None) -> bool:
    """True for ``scheme://...`` storages other than ``file://`` (which is a directory)."""
    return isinstance(value, str) and "://" in value and not value.startswith("file://")


def join(uri: str, *parts: str) -> str:
    """``uri`` with path ``parts`` appended, before any ``?query`` of file-system options."""
    base, sep, query = uri.partition("?")
    path = "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return path + sep + query


def filesystem(uri: str, what: str = "storage") -> tuple[Any, str]:
    """``(pyarrow FileSystem, path inside it)`` for ``uri``; a clear error naming ``what`` otherwise."""
    import pyarrow.fs as pafs

    # pyarrow takes a local path only when absolute; a relative one means what it means to
    # ``open()``: relative to this process's working directory.
    target = uri if "://" in uri else os.path.abspath(uri)
    try:
        return pafs.FileSystem.from_uri(target)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError with the reason
        raise ValueError(f"{what}: cannot open {uri} ({err})") from err


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as stream:
        return bytes(stream.read())


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def list_dirs(uri: str) -> list[str]:
    """Names of the directories directly under ``uri`` (empty when it does not exist)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(info.base_name for info in infos if info.type == pafs.FileType.Directory)


def upload_dir(local: Path, uri: str, skip: tuple[str, ...] = (), unchanged: dict[str, Any] | None = None) -> None:
    """Copy the files of ``local`` (recursively, except top-level names in ``skip``) to ``uri``.

    ``unchanged``, when given, maps a relative path to the (size, mtime) it had when last copied;
    files still matching are skipped and the map is updated.
    """
    fs, root = filesystem(uri)
    for path in sorted(local.rglob("*")):
        relative = path.relative_to(local)
        if not path.is_file() or relative.parts[0] in skip or path.name.endswith(".tmp"):
            continue
        stat = path.stat()
        if unchanged is not None:
            if unchanged.get(relative.as_posix()) == (stat.st_size, stat.st_mtime_ns):
                continue
            unchanged[relative.as_posix()] = (stat.st_size, stat.st_mtime_ns)
        target = f"{root}/{relative.as_posix()}"
        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with path.open("rb") as source, fs.open_output_stream(target) as sink:
            shutil.copyfileobj(source, sink, length=1 << 20)


def download_dir(uri: str, local: Path, skip: tuple[str, ...] = ()) -> Path:
    """Copy everything under ``uri`` (except top-level names in ``skip``) into ``local``."""
    fs, root = filesystem(uri)
    return _copy_down(fs, root, local, skip)


def _copy_down(fs: Any, root: str, local: Path, skip: tuple[str, ...] = ()) -> Path:
    """Copy the files under ``root`` on ``fs`` (except top-level names in ``skip``) into ``local``."""
    import pyarrow.fs as pafs

    local.mkdir(parents=True, exist_ok=True)
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        relative = info.path[len(root) :].lstrip("/")
        if info.type != pafs.FileType.File or relative.split("/")[0] in skip:
            continue
        target = local / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as source, target.open("wb") as sink:
            shutil.copyfileobj(source, sink, length=1 << 20)
    return local


def scratch_dir(kind: str, key: str) -> Path:
    """A node-local directory for ``key`` (a URI) that this node's workers share."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / SCRATCH / kind / digest


class RunMirror:
    """A node-local copy of a run directory whose home is ``uri`` (see the module doc).

    ``kind`` keeps the driver's mirror apart from rank 0's when both run on one node; ``fresh``
    starts from an empty directory, so files of an earlier run never reach the storage.
    """

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
        download_dir(self.uri, self.local, skip=(CHECKPOINTS,))
        self.pushed = {}

    def push(self, names: list[str] | None = None) -> None:
        """Upload the run's files that changed since the last push (``names`` only, when given)."""
        if names is None:
            upload_dir(self.local, self.uri, skip=(CHECKPOINTS,), unchanged=self.pushed)
            return
        for name in names:
            write_bytes(join(self.uri, name), (self.local / name).read_bytes())


def publish_shards(local: Path, storage: str) -> str:
    """Upload the shard directory ``local`` to ``STORAGE/data/NAME-HASH`` once; returns that URI."""
    digest = hashlib.sha256((local / MANIFEST).read_bytes()).hexdigest()[:12]
    uri = join(storage, "data", f"{local.name}-{digest}")
    if not exists(join(uri, MANIFEST)):
        upload_dir(local, uri, skip=(MANIFEST,))
        write_bytes(join(uri, MANIFEST), (local / MANIFEST).read_bytes())  # last: marks it complete
    return uri


def localize_shards(uri: str) -> Path:
    """A node-local copy of the shard directory at ``uri`` (copied once per node).

    Workers on one node may copy at once: each copies into its own directory and renames it into
    place; the loser of that race drops its copy.
    """
    final = scratch_dir("data", uri)
    if (final / MANIFEST).is_file():
        return final
    if not exists(join(uri, MANIFEST)):
        raise ValueError(f"data: {uri} is not a complete shard directory (no {MANIFEST})")
    partial = final.with_name(f"{final.name}.{uuid.uuid4().hex[:8]}.partial")
    download_dir(uri, partial)
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
        _copy_down(fs, f"{parent}/{tag}", partial)
        os.replace(partial, local_parent / tag)
    collectives.barrier()
    return local_parent


def drop_node_checkpoint(local_parent: Path, is_copier: bool) -> None:
    """Remove this node's copy once every rank has loaded it (every rank calls it: a barrier)."""
    collectives.barrier()
    if is_copier:
        shutil.rmtree(local_parent, ignore_errors=True)
