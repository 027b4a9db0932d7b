"""Streaming reading of shards: shard URLs, opening them without a shell, and their samples front to back.

``expand_urls`` turns a shard directory, a brace pattern or a list into shard URLs and refuses
any URL that is not a plain path or a URI of a known scheme (``storage.check_url``): shards are opened
by ``storage.open_input`` through ``pyarrow.fs`` (s3, gs, hdfs, abfs, file) or ``urllib`` (http, https),
never by a command, so no part of a URL ever reaches a shell (WebDataset's ``pipe:`` ran its
URL through ``sh -c``). A remote URL must also be free of the characters a shell or a URL
parser would read as syntax (``;|&$<>`` quotes, spaces, ``#`` ...; ``&`` and ``=`` only in the
query of ``pyarrow`` options), so a URL naming something else than a file is refused at load.

``iter_tar_samples`` streams one shard with a tar reader of its own that checks every header,
so a corrupt header in the middle of a shard is noticed instead of ending the shard silently.
Two kinds of failure, treated differently (``data/bad_data.py``):
- bad data (a corrupt or truncated tar, an empty shard, a missing or non-integer class field)
  is skipped with a warning naming the shard and key, and counted in the caller's ``BadDataLog``;
- a storage error (the shard cannot be opened or read: missing, permission, EIO, network) is
  retried a few times, resuming after the last sample read, then raised as ``StorageError``, so
  the step fails and Ray Train restarts the worker instead of training on less data.
"""

from __future__ import annotations

import itertools
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import braceexpand

from dml_dist import storage
from dml_dist.data.bad_data import BadDataLog, wait_or_raise
from dml_dist.data.shard_layout import IMAGE_EXTENSIONS, MANIFEST, is_complete, parse_label


def expand_urls(spec: str | Path | Sequence[str]) -> list[str]:
    """Shard URLs of a spec: a shard directory, a brace pattern (``/d/shard-{000000..000009}.tar``),
    a URI of a known scheme (braces expanded too), or a list of those. Each URL is checked
    (``storage.check_url``) and local paths must exist: either failure is a ``ValueError`` naming it."""
    items = [str(spec)] if isinstance(spec, str | Path) else [str(s) for s in spec]
    urls: list[str] = []
    for item in items:
        local = storage.local_path(item)
        if local is not None and local.is_dir():
            urls.extend(shard_urls(local))
            continue
        for url in braceexpand.braceexpand(item):
            storage.check_url(url)
            local = storage.local_path(url)
            if local is not None and not local.is_file():
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


def iter_tar_samples(url: str, bad: BadDataLog | None = None) -> Iterator[tuple[str, int, bytes]]:
    """(key, label, image bytes) of every valid sample of one shard, in order.

    Bad data is skipped and counted in ``bad`` (a fresh log when None: warned, not kept): an
    empty, corrupt or cut-short tar ends the shard after its last good sample; a sample without
    an image, without a class field or with a non-integer one is dropped. A storage error is
    retried and then raised (``_members``). Decoding is the caller's (it fails later, and is
    skipped there with the same warning).
    """
    bad = BadDataLog() if bad is None else bad
    name = storage.display_name(url)
    key: str | None = None
    fields: dict[str, bytes] = {}
    try:
        for member_name, data in _members(url):
            base, _, ext = member_name.rpartition("/")[2].partition(".")
            if base != key:
                if key is not None:
                    yield from _complete_sample(name, key, fields, bad)
                key, fields = base, {}
            fields[ext.lower()] = data
        if key is None:
            bad.skip(name, "-", "empty shard")
        else:
            yield from _complete_sample(name, key, fields, bad)
    except (tarfile.TarError, EOFError, ValueError) as err:
        bad.skip(name, key or "-", f"corrupt or truncated tar ({err}); rest of the shard skipped")


def _members(url: str) -> Iterator[tuple[str, bytes]]:
    """The regular members of one shard; an ``OSError`` while opening or reading it (a storage
    error, not bad data) reopens the shard and resumes after the members already given, up to
    ``IO_ATTEMPTS`` times, then raises ``StorageError`` naming the shard."""
    given = 0
    for attempt in itertools.count(1):
        try:
            with storage.open_input(url) as stream:
                for position, member in enumerate(_tar_members(stream)):
                    if position >= given:
                        given += 1
                        yield member
            return
        except OSError as err:
            wait_or_raise(attempt, f"shard {url}", err)


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


def _complete_sample(
    shard: str, key: str, fields: dict[str, bytes], bad: BadDataLog
) -> Iterator[tuple[str, int, bytes]]:
    image = next((fields[ext] for ext in IMAGE_EXTENSIONS if ext in fields), None)
    if image is None:
        bad.skip(shard, key, "no image member")
        return
    if "cls" not in fields:
        bad.skip(shard, key, "no class field (.cls)")
        return
    label = parse_label(fields["cls"].decode(errors="replace").strip())
    if label is None:
        bad.skip(shard, key, f"class field {fields['cls'][:20]!r} is not an integer")
        return
    yield key, label, image


def stream_samples(spec: str | Path | Sequence[str]) -> Iterator[tuple[bytes, int]]:
    """(image bytes, label) of every valid sample of every shard, front to back (evaluation)."""
    bad = BadDataLog()
    for url in expand_urls(spec):
        for _, label, image in iter_tar_samples(url, bad):
            yield image, label
