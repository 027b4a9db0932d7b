"""Writing a shard directory (layout: ``data/shard_layout.py``): plan, tars, class index, manifest.

Writing is resumable and atomic. Everything is built in ``<directory>.partial``; each shard is
written as ``shard-N.tar.tmp`` and renamed when closed (``dml_dist.atomic.atomic_path``), so a
killed run leaves only whole shards (and a ``.partial`` directory no reader accepts). A re-run
with the same input (same fingerprint) skips a complete directory entirely, or keeps the
finished shards of a ``.partial`` one and writes only the rest. Writers of one directory take
turns (``flock`` on ``<directory>.lock``, left beside it): the second finds the directory
complete and writes nothing.

Nothing that the writer did not write is ever deleted: it writes into a new or empty directory,
or replaces a complete set that it wrote itself (its manifest has a fingerprint, and nothing else
is in it); a directory holding anything else is refused in one line that names what is there
(``check_writable``). Replacing a set moves it aside (``<directory>.replaced``), moves the new one
in, and then removes only the files that a writer of a set writes.

Each class's name (a folder's path relative to the source, or the data set's own label) goes to
the manifest (``class_names``): the gallery and ``dml-dist embed`` show it instead of a number.

Bad input files are caught at conversion, not in training: with a ``check`` (``dml-dist shards``
decodes every image in full, ``data/images.py: image_problem``) a sample whose bytes fail is
left out of its shard, named with its reason (``on_bad``), and listed in the manifest
(``num_bad_files``, ``bad_files``); every other sample is written. A finished shard's bad files
are kept beside it (``shard-N.tar.bad.json``) until the manifest is written, so a resumed run
still lists them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dml_dist.atomic import atomic_path
from dml_dist.data.bad_data import BadDataLog
from dml_dist.data.shard_layout import (
    BAD_SUFFIX,
    CLASS_INDEX,
    FINGERPRINT,
    IMAGE_EXTENSIONS,
    MANIFEST,
    SHARD_PATTERN,
    is_complete,
    parse_label,
    read_manifest,
)
from dml_dist.data.shard_output import REPLACED_SUFFIX, check_writable, foreign_entries, remove_written


@dataclass(frozen=True)
class Sample:
    """One image to write: label, key inside the shard, how to read its encoded bytes.

    ``origin`` identifies the input (a path with its size and mtime, or generator parameters);
    it enters the fingerprint that lets a re-run skip what is already written.
    """

    label: int
    key: str
    read: Callable[[], bytes]
    ext: str = "png"
    origin: str = ""
    path: str = ""
    """The input file, where there is one: how messages about a bad sample name it."""


def fingerprint_of(samples: Sequence[Sample], samples_per_shard: int, source: dict[str, Any]) -> str:
    """Hash of everything that determines the output: source, shard size, every sample's origin."""
    digest = hashlib.sha256(json.dumps({"source": source, "samples_per_shard": samples_per_shard}).encode())
    for s in samples:
        digest.update(f"{s.label}\t{s.key}\t{s.ext}\t{s.origin}\n".encode())
    return digest.hexdigest()


def plan_shards(samples: Sequence[Sample], samples_per_shard: int) -> list[list[Sample]]:
    """Group class-contiguous samples into shards, keeping each class whole when it fits."""
    runs: list[list[Sample]] = []
    seen: set[int] = set()
    for sample in samples:
        if runs and runs[-1][0].label == sample.label:
            runs[-1].append(sample)
            continue
        if sample.label in seen:
            raise ValueError(f"shards: samples must be grouped by class; label {sample.label} appears twice")
        seen.add(sample.label)
        runs.append([sample])
    shards: list[list[Sample]] = []
    current: list[Sample] = []
    for run in runs:
        if current and len(current) + len(run) > samples_per_shard:
            shards.append(current)
            current = []
        while len(run) > samples_per_shard:  # a class larger than a shard spans several
            shards.append(run[:samples_per_shard])
            run = run[samples_per_shard:]
        current.extend(run)
    if current:
        shards.append(current)
    return shards


def write_shards(
    samples: Iterable[Sample],
    directory: str | Path,
    samples_per_shard: int,
    source: dict[str, Any],
    progress: Callable[[int], None] | None = None,
    class_names: dict[int, str] | None = None,
    check: Callable[[bytes], str | None] | None = None,
    on_bad: Callable[[Sample, str], None] | None = None,
) -> tuple[Path, bool]:
    """Write ``samples`` (grouped by class) as shards + index + manifest; resumable and atomic.

    ``progress(n)`` is called as each n samples are done (a bar's ``update``). ``check(bytes)``
    returns why a sample is unusable (None = fine); such a sample is skipped, passed to
    ``on_bad`` with the reason, and listed in the manifest. Returns (final directory, whether
    anything was written): a complete directory with the same fingerprint is left as it is.
    """
    samples = list(samples)
    if samples_per_shard <= 0:
        raise ValueError(f"--samples-per-shard: expected a positive integer, got {samples_per_shard}")
    final = Path(directory)
    fingerprint = fingerprint_of(samples, samples_per_shard, source)
    if is_complete(final) and read_manifest(final).get("fingerprint") == fingerprint:
        return final, False
    check_writable(final)
    with _writer_lock(final):
        # Another process (a concurrent trial or worker) may have written it while we waited.
        if is_complete(final) and read_manifest(final).get("fingerprint") == fingerprint:
            return final, False
        _write_locked(samples, final, fingerprint, samples_per_shard, source, progress, class_names, check, on_bad)
    return final, True


@contextlib.contextmanager
def _writer_lock(final: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``<directory>.lock``: one writer of a directory at a time, across
    processes (``dml-dist tune`` starts trials at once, each resolving the same data)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.with_name(final.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_locked(
    samples: list[Sample],
    final: Path,
    fingerprint: str,
    samples_per_shard: int,
    source: dict[str, Any],
    progress: Callable[[int], None] | None,
    class_names: dict[int, str] | None,
    check: Callable[[bytes], str | None] | None,
    on_bad: Callable[[Sample, str], None] | None,
) -> None:
    check_writable(final)  # again: another process may have written into it while we waited
    partial = final.with_name(final.name + ".partial")
    if partial.exists() and (foreign_entries(partial) or not (partial / FINGERPRINT).is_file()):
        raise ValueError(f"shards: {partial} is in the way and was not written by dml-dist shards; move it away")
    if not partial.exists() or (partial / FINGERPRINT).read_text() != fingerprint:
        if partial.exists():
            remove_written(partial)  # an interrupted write of other input
        partial.mkdir(parents=True)
        (partial / FINGERPRINT).write_text(fingerprint)
    names: list[str] = []
    bad_files: list[dict[str, str]] = []
    for shard_pos, group in enumerate(plan_shards(samples, samples_per_shard)):
        name = SHARD_PATTERN % shard_pos
        names.append(name)
        bad_list = partial / (name + BAD_SUFFIX)
        if not (partial / name).is_file():  # finished shards of an interrupted run are kept
            _write_tar(partial / name, group, check, on_bad, progress)
        elif progress is not None:
            progress(len(group))
        if bad_list.is_file():
            bad_files += json.loads(bad_list.read_text())
    index = build_class_index(partial, names)
    (partial / CLASS_INDEX).write_text(json.dumps(index))
    manifest = {
        "num_samples": sum(len(entries) for entries in index["classes"].values()),
        "num_classes": len(index["classes"]),
        "num_shards": len(names),
        "samples_per_shard": samples_per_shard,
        "num_bad_files": len(bad_files),
        "bad_files": bad_files,
        "source": source,
        "fingerprint": fingerprint,
        "class_names": {str(label): name for label, name in sorted((class_names or {}).items())},
    }
    for bad_list in partial.glob("*" + BAD_SUFFIX):
        bad_list.unlink()
    (partial / FINGERPRINT).unlink()
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2))
    _move_in(partial, final)


def _move_in(partial: Path, final: Path) -> None:
    """Put the finished set in place; a set already there (``check_writable``: one we wrote) is
    moved aside first and removed file by file once the new one is in."""
    if not final.exists() or not any(final.iterdir()):
        os.replace(partial, final)  # a rename onto an empty directory replaces it
        return
    aside = final.with_name(final.name + REPLACED_SUFFIX)
    if aside.exists():
        remove_written(aside)  # left by a writer killed between the two renames below
    os.replace(final, aside)
    os.replace(partial, final)
    remove_written(aside)


def _write_tar(
    path: Path,
    group: list[Sample],
    check: Callable[[bytes], str | None] | None = None,
    on_bad: Callable[[Sample, str], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """One shard, written under a temporary name and renamed once closed; the samples that fail
    ``check`` are left out and listed in ``<shard>.bad.json`` (written before the rename)."""
    bad: list[dict[str, str]] = []
    with atomic_path(path) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in group:
                image = sample.read()
                problem = check(image) if check is not None else None
                if problem is not None:
                    bad.append({"path": sample.path or sample.origin, "key": sample.key, "reason": problem})
                    if on_bad is not None:
                        on_bad(sample, problem)
                else:
                    for ext, data in ((sample.ext, image), ("cls", str(sample.label).encode())):
                        info = tarfile.TarInfo(f"{sample.key}.{ext}")
                        info.size, info.mode, info.mtime = len(data), 0o444, 0
                        tar.addfile(info, io.BytesIO(data))
                if progress is not None:
                    progress(1)
        bad_list = path.with_name(path.name + BAD_SUFFIX)
        if bad:
            bad_list.write_text(json.dumps(bad))
        else:
            bad_list.unlink(missing_ok=True)


def build_class_index(directory: Path, shards: list[str]) -> dict[str, Any]:
    """Scan the tars: label -> [[shard position, data offset, data size, key], ...] of its images."""
    bad = BadDataLog()
    classes: dict[str, list[list[Any]]] = {}
    for shard_pos, name in enumerate(shards):
        labels: dict[str, str] = {}
        images: dict[str, list[Any]] = {}
        with tarfile.open(directory / name) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if ext == "cls":
                    handle = tar.extractfile(member)
                    assert handle is not None
                    labels[key] = handle.read().decode(errors="replace").strip()
                elif ext.lower() in IMAGE_EXTENSIONS:
                    images[key] = [shard_pos, member.offset_data, member.size, key]
        for key, entry in images.items():
            label = parse_label(labels.get(key))
            if label is None:
                bad.skip(name, key, f"class field {labels.get(key)!r} is not an integer")
                continue
            classes.setdefault(str(label), []).append(entry)
    return {"shards": shards, "classes": classes}
