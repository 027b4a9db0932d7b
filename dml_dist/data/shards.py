"""WebDataset shards plus a class index: written once, read by class (indexed) or as a stream.

A shard directory holds:
- ``shard-NNNNNN.tar``: WebDataset tar files; sample ``c000042_0003`` has members
  ``c000042_0003.png`` (or ``.jpg``: the source's own encoding, never re-encoded) and
  ``c000042_0003.cls`` (its integer label as text). Samples are written class by class and a
  class is never split across shards unless it alone is larger than a shard, so picking N
  classes touches at most N shards, and streaming readers that divide shards between ranks see
  every class on one rank only.
- ``class_index.json``: for every class, the (shard, byte offset, byte size, key) of each image
  member's data inside its tar, so a reader seeks straight to an image (indexed access).
- ``manifest.json``: counts, the source and a fingerprint of the input; written last, so a
  directory without it is incomplete and is never read.

Writing is resumable and atomic. Everything is built in ``<directory>.partial``; each shard is
written as ``shard-N.tar.tmp`` and renamed when closed, so a killed run leaves only whole shards
(and a ``.partial`` directory no reader accepts). A re-run with the same input (same
fingerprint) skips a complete directory entirely, or keeps the finished shards of a
``.partial`` one and writes only the rest.

Bad input files are caught at conversion, not in training: with a ``check`` (``dml-dist shards``
decodes every image in full, ``data/images.py: image_problem``) a sample whose bytes fail is
left out of its shard, named with its reason (``on_bad``), and listed in the manifest
(``num_bad_files``, ``bad_files``); every other sample is written. A finished shard's bad files
are kept beside it (``shard-N.tar.bad.json``) until the manifest is written, so a resumed run
still lists them.

Reading: ``IndexedShards`` serves the class-driven sampler (a step reads only its N x K images);
``iter_tar_samples`` streams one shard (local path, ``pipe:`` command, or an http/https, gs or
s3 URL opened by the matching command-line tool through webdataset's ``gopen``);
``expand_urls`` turns a directory, a brace pattern or a list into shard URLs. Bad data never
crashes a reader: a corrupt or truncated tar, an empty shard, an undecodable image, a missing or
non-integer class field are skipped with a warning naming the shard and key, and counted
(``skipped_samples_total``; the training loop exports it as a Prometheus counter).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import braceexpand

CLASS_INDEX = "class_index.json"
MANIFEST = "manifest.json"
FINGERPRINT = "fingerprint.txt"
SHARD_PATTERN = "shard-%06d.tar"
BAD_SUFFIX = ".bad.json"
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "gif", "webp")
REMOTE_SCHEMES = ("pipe:", "http://", "https://", "gs://", "s3://")

log = logging.getLogger("dml_dist.data")


# ----------------------------------------------------------------------------- bad data
class BadSample(Exception):
    """A sample that cannot be used; ``shard`` and ``key`` name it."""

    def __init__(self, shard: str, key: str, reason: str):
        super().__init__(f"{shard}: {key}: {reason}")
        self.shard, self.key, self.reason = shard, key, reason


_skipped = {"total": 0}
_warned: set[tuple[str, str]] = set()


def record_skip(shard: str, key: str, reason: str) -> None:
    """Count one skipped sample and warn (once per shard and key in this process)."""
    _skipped["total"] += 1
    if (shard, key) not in _warned:
        _warned.add((shard, key))
        log.warning("data: skipped %s in shard %s: %s", key, shard, reason)


def add_skipped(count: int) -> None:
    """Add skips counted (and already warned about) in another process, e.g. a DataLoader worker."""
    _skipped["total"] += count


def skipped_samples_total() -> int:
    """Samples skipped as bad data by this process (and the workers that reported to it)."""
    return _skipped["total"]


# ----------------------------------------------------------------------------- writing
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


def is_complete(directory: str | Path) -> bool:
    """True when ``directory`` holds a finished shard set (its manifest exists)."""
    return (Path(directory) / MANIFEST).is_file()


def read_manifest(directory: str | Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((Path(directory) / MANIFEST).read_text())
    return manifest


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
    partial = final.with_name(final.name + ".partial")
    if not (partial / FINGERPRINT).is_file() or (partial / FINGERPRINT).read_text() != fingerprint:
        shutil.rmtree(partial, ignore_errors=True)
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
    if class_names:
        index["names"] = {str(label): name for label, name in class_names.items()}
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
    }
    for bad_list in partial.glob("*" + BAD_SUFFIX):
        bad_list.unlink()
    (partial / FINGERPRINT).unlink()
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    return final, True


def _write_tar(
    path: Path,
    group: list[Sample],
    check: Callable[[bytes], str | None] | None = None,
    on_bad: Callable[[Sample, str], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """One shard, written under a temporary name and renamed once closed; the samples that fail
    ``check`` are left out and listed in ``<shard>.bad.json`` (written before the rename)."""
    tmp = path.with_name(path.name + ".tmp")
    bad: list[dict[str, str]] = []
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
    os.replace(tmp, path)


def build_class_index(directory: Path, shards: list[str]) -> dict[str, Any]:
    """Scan the tars: label -> [[shard position, data offset, data size, key], ...] of its images."""
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
            label = _parse_label(labels.get(key))
            if label is None:
                record_skip(name, key, f"class field {labels.get(key)!r} is not an integer")
                continue
            classes.setdefault(str(label), []).append(entry)
    return {"shards": shards, "classes": classes}


def _parse_label(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


# ----------------------------------------------------------------------------- indexed reading
class IndexedShards:
    """Random access to a shard directory's images by (class position, sample position).

    Class positions are 0..C-1 over the sorted labels; the mining bank and the sampler work in
    positions, the loss in labels. File handles open lazily per process, so the object pickles
    (to Ray workers, DataLoader workers) without them. Every shard file must exist at start.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not is_complete(self.directory):
            raise ValueError(f"data: {self.directory} is not a complete shard directory (no {MANIFEST})")
        index = json.loads((self.directory / CLASS_INDEX).read_text())
        self.shards: list[str] = index["shards"]
        for name in self.shards:
            if not (self.directory / name).is_file():
                raise ValueError(f"data: shard {self.directory / name} listed in {CLASS_INDEX} does not exist")
        self.labels: list[int] = sorted(int(label) for label in index["classes"])
        self.entries: list[list[list[Any]]] = [index["classes"][str(label)] for label in self.labels]
        self.names: dict[str, str] = index.get("names", {})
        self._handles: dict[int, Any] = {}

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def class_sizes(self) -> list[int]:
        return [len(entries) for entries in self.entries]

    def where(self, class_pos: int, sample_pos: int) -> tuple[str, str]:
        """(shard name, key) of a sample, for messages."""
        entry = self.entries[class_pos][sample_pos]
        key = entry[3] if len(entry) > 3 else f"class {self.labels[class_pos]} sample {sample_pos}"
        return self.shards[entry[0]], key

    def read(self, class_pos: int, sample_pos: int) -> bytes:
        """The encoded image bytes of one sample; ``BadSample`` when the shard is cut short."""
        shard_pos, offset, size = self.entries[class_pos][sample_pos][:3]
        handle = self._handles.get(shard_pos)
        if handle is None:
            handle = open(self.directory / self.shards[shard_pos], "rb")  # noqa: SIM115 (cached)
            self._handles[shard_pos] = handle
        # pread, not seek + read: forked DataLoader workers share the descriptor and its offset.
        data: bytes = os.pread(handle.fileno(), size, offset)
        if len(data) != size:
            raise BadSample(*self.where(class_pos, sample_pos), f"truncated: {len(data)} of {size} bytes")
        return data

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


# ----------------------------------------------------------------------------- streaming reading
def is_remote(url: str) -> bool:
    return url.startswith(REMOTE_SCHEMES)


def expand_urls(spec: str | Path | Sequence[str]) -> list[str]:
    """Shard URLs of a spec: a shard directory, a brace pattern (``/d/shard-{000000..000009}.tar``),
    a remote URL or ``pipe:`` command (braces expanded too), or a list of those. Local paths must
    exist: a missing one is a ``ValueError`` naming it."""
    items = [str(spec)] if isinstance(spec, str | Path) else [str(s) for s in spec]
    urls: list[str] = []
    for item in items:
        if not is_remote(item) and Path(item).is_dir():
            urls.extend(shard_urls(item))
            continue
        for url in braceexpand.braceexpand(item):
            if not is_remote(url) and not Path(url).is_file():
                raise ValueError(f"data: shard {url} does not exist")
            urls.append(url)
    if not urls:
        raise ValueError(f"data: no shards in {spec}")
    return urls


def shard_urls(directory: str | Path) -> list[str]:
    """The tar files of a complete shard directory, in order."""
    directory = Path(directory)
    if not is_complete(directory):
        raise ValueError(f"data: {directory} is not a complete shard directory (no {MANIFEST})")
    return [str(p) for p in sorted(directory.glob("shard-*.tar"))]


def open_url(url: str) -> Any:
    """A binary stream of a shard: local file, ``pipe:``, http(s) (curl), gs (gsutil), s3 (aws cli)."""
    from webdataset.gopen import gopen

    if url.startswith("s3://"):  # webdataset has no s3 opener of its own; the aws CLI streams to stdout
        url = f"pipe:aws s3 cp {url} -"
    return gopen(url, "rb")


def iter_tar_samples(url: str) -> Iterator[tuple[str, int, bytes]]:
    """(key, label, image bytes) of every valid sample of one shard, in order.

    Bad data is skipped and counted (``record_skip``): an unreadable, empty, corrupt or cut-short
    tar ends the shard after its last good sample; a sample without an image, without a class
    field or with a non-integer one is dropped. Decoding is the caller's (it fails later, and is
    skipped there with the same warning).
    """
    name = url if is_remote(url) else Path(url).name
    key: str | None = None
    fields: dict[str, bytes] = {}
    try:
        stream = open_url(url)
    except Exception as err:  # a shard that vanished after start, a failing command
        record_skip(name, "-", f"cannot open: {err}")
        return
    try:
        with stream:
            for member_name, data in _tar_members(stream):
                base, _, ext = member_name.rpartition("/")[2].partition(".")
                if base != key:
                    if key is not None:
                        yield from _complete_sample(name, key, fields)
                    key, fields = base, {}
                fields[ext.lower()] = data
        if key is None:
            record_skip(name, "-", "empty shard")
        else:
            yield from _complete_sample(name, key, fields)
    except (tarfile.TarError, OSError, EOFError, ValueError) as err:
        record_skip(name, key or "-", f"corrupt or truncated tar ({err}); rest of the shard skipped")


def _tar_members(stream: Any) -> Iterator[tuple[str, bytes]]:
    """(name, data) of the regular files of a tar stream, checking every header's checksum.

    Python's ``tarfile`` ends iteration silently at a corrupt header in the middle of an archive;
    this reader says so (``tarfile.ReadError``), so the loss is warned about and counted.
    """
    long_name: str | None = None
    while True:
        header = stream.read(512)
        if not header or header == b"\0" * len(header):
            return  # end of archive (or an empty stream: the caller reports it)
        if len(header) < 512:
            raise tarfile.ReadError("header cut short")
        stored = _octal(header[148:156])
        computed = sum(header[:148]) + 8 * 32 + sum(header[156:])
        if stored != computed:
            raise tarfile.ReadError("bad header checksum")
        size = _octal(header[124:136])
        data = stream.read(size)
        if len(data) < size:
            raise tarfile.ReadError(f"member data cut short ({len(data)} of {size} bytes)")
        stream.read(-size % 512)
        kind = header[156:157]
        if kind in (b"L", b"x"):  # GNU long name / pax header: names the next member
            text = data.decode(errors="replace")
            long_name = text.rstrip("\0") if kind == b"L" else _pax_path(text) or long_name
            continue
        name = header[:100].rstrip(b"\0").decode(errors="replace")
        prefix = header[345:500].rstrip(b"\0").decode(errors="replace")
        name = long_name or (f"{prefix}/{name}" if prefix else name)
        long_name = None
        if kind in (b"0", b"\0"):
            yield name, data


def _octal(field: bytes) -> int:
    text = field.rstrip(b"\0 ").strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise tarfile.ReadError(f"bad number field {field!r}") from None


def _pax_path(text: str) -> str | None:
    for record in text.splitlines():
        _, _, keyval = record.partition(" ")
        if keyval.startswith("path="):
            return keyval[5:]
    return None


def _complete_sample(shard: str, key: str, fields: dict[str, bytes]) -> Iterator[tuple[str, int, bytes]]:
    image = next((fields[ext] for ext in IMAGE_EXTENSIONS if ext in fields), None)
    if image is None:
        record_skip(shard, key, "no image member")
        return
    if "cls" not in fields:
        record_skip(shard, key, "no class field (.cls)")
        return
    label = _parse_label(fields["cls"].decode(errors="replace").strip())
    if label is None:
        record_skip(shard, key, f"class field {fields['cls'][:20]!r} is not an integer")
        return
    yield key, label, image


def stream_samples(spec: str | Path | Sequence[str]) -> Iterator[tuple[bytes, int]]:
    """(image bytes, label) of every valid sample of every shard, front to back (evaluation)."""
    for url in expand_urls(spec):
        for _, label, image in iter_tar_samples(url):
            yield image, label
