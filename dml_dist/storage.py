"""One storage layer: every file the system reads or writes by location, local or remote, through ``pyarrow.fs``.

A *location* is a ``str`` or a ``Path``. With a scheme other than ``file`` (``s3://bucket/x``,
``gs://...``, ``hdfs://...``, ``https://...`` for shards) it is remote; without one (or with
``file://``) it is a path on this machine, opened by ``pyarrow.fs.LocalFileSystem``. This module
is the only place that asks which of the two a location is (``scheme_of``, ``local_path``); every
caller reads, writes, lists and joins through the functions below, which take either kind.

- ``join`` keeps the kind: a ``Path`` stays a ``Path``; a URI gets its parts before any ``?query``
  (``s3://b/x?endpoint_override=host:9000``: the query belongs to the file system).
- Local writes are atomic (``atomic.py``: a temporary file, then ``os.replace``); a remote write
  is one object, which object stores make visible whole.
- Shards may also be read over http(s) (``open_input``); a URL of another scheme, or with characters
  that a shell or URL parser reads as syntax, is refused (``check_url``): nothing reaches a shell.
- A scheme is two characters or more before ``:`` (``C:`` is a drive). A relative path whose
  first part holds a colon reads as a scheme: write ``./exp:v2``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import urllib.request
from pathlib import Path
from typing import Any

from dml_dist.atomic import atomic_path

Location = str | os.PathLike[str]
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")  # two letters or more: "C:" is a drive, not a scheme
_LOCAL_PREFIX = "file://"


def scheme_of(location: Location) -> str | None:
    """The lower-case scheme of ``location`` (``s3`` of ``s3://b/x``, ``pipe`` of ``pipe:cat x``), or None for a path."""
    match = _SCHEME.match(os.fspath(location))
    return match.group(1).lower() if match else None


def local_path(location: Location) -> Path | None:
    """The path on this machine that ``location`` names (``file://`` stripped), or None when it is remote."""
    text = os.fspath(location)
    if text.startswith(_LOCAL_PREFIX):
        return Path(text[len(_LOCAL_PREFIX) :])
    return Path(text) if scheme_of(text) is None else None


def is_local(location: Location) -> bool:
    return local_path(location) is not None


def absolute(location: Location) -> Path | str:
    """A local location as an absolute, resolved ``Path``; a URI as it is."""
    path = local_path(location)
    return path.resolve() if path is not None else os.fspath(location)


def display_name(location: Location) -> str:
    """How a message names a shard or file: its file name when local, the whole URI when remote."""
    path = local_path(location)
    return path.name if path is not None else os.fspath(location)


def join(location: Location, *parts: str) -> Path | str:
    """``location`` with path ``parts`` appended: a ``Path`` for a local location, else a URI string."""
    path = local_path(location)
    if path is not None:
        return path.joinpath(*(p.strip("/") for p in parts))
    base, sep, query = os.fspath(location).partition("?")
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)]) + sep + query


def filesystem(location: Location, what: str = "storage") -> tuple[Any, str]:
    """``(pyarrow FileSystem, path inside it)`` for ``location``; a ``ValueError`` naming ``what`` otherwise.

    A relative local path means what it means to ``open()``: relative to the working directory.
    """
    import pyarrow.fs as pafs

    path = local_path(location)
    if path is not None:
        return pafs.LocalFileSystem(), str(path.absolute())
    try:
        return pafs.FileSystem.from_uri(os.fspath(location))
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError with the reason
        raise ValueError(f"{what}: cannot open {location} ({err})") from err


def exists(location: Location) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)


def read_bytes(location: Location) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as stream:
        return bytes(stream.read())


def read_text(location: Location) -> str | None:
    """The file's text, or None when there is no such file (also one removed while we looked)."""
    if not exists(location):  # object stores may answer a missing key with a plain OSError
        return None
    try:
        return read_bytes(location).decode()
    except FileNotFoundError:
        return None


def write_bytes(location: Location, data: bytes) -> None:
    """Write the whole file (parents created): atomically on this machine, as one object remotely."""
    path = local_path(location)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return
    fs, inner = filesystem(location)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(inner) as stream:
        stream.write(data)


def create_new(location: Location, data: bytes) -> bool:
    """Write the file only if none exists; False when one does. Exclusive on this machine
    (``O_EXCL``); remotely a check then a write (object stores offer no exclusive create)."""
    path = local_path(location)
    if path is None:
        if exists(location):
            return False
        write_bytes(location, data)
        return True
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(handle, "wb") as file:
        file.write(data)
    return True


def delete_file(location: Location) -> None:
    """Remove the file; no error when it is already gone."""
    fs, path = filesystem(location)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def delete_dir(location: Location) -> None:
    """Remove the directory and what it holds; no error when it is already gone."""
    fs, path = filesystem(location)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_dir(path)


def list_names(location: Location, directories_only: bool = False) -> list[str]:
    """Names directly under ``location``, sorted (empty when it does not exist)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos if not directories_only or i.type == pafs.FileType.Directory)


def list_dirs(location: Location) -> list[str]:
    """Names of the directories directly under ``location`` (empty when it does not exist)."""
    return list_names(location, directories_only=True)


def upload_dir(
    local: Path, location: Location, skip: tuple[str, ...] = (), unchanged: dict[str, Any] | None = None
) -> None:
    """Copy the files of ``local`` (recursively, except top-level names in ``skip``) to ``location``.

    ``unchanged``, when given, maps a relative path to the (size, mtime) it had when last copied;
    files still matching are skipped and the map is updated.
    """
    fs, root = filesystem(location)
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


def download_dir(location: Location, local: Path, skip: tuple[str, ...] = ()) -> Path:
    """Copy everything under ``location`` (except top-level names in ``skip``) into ``local``."""
    fs, root = filesystem(location)
    return copy_down(fs, root, local, skip)


def copy_down(fs: Any, root: str, local: Path, skip: tuple[str, ...] = ()) -> Path:
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


PYARROW_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")
HTTP_SCHEMES = ("http", "https")
KNOWN_SCHEMES = (*PYARROW_SCHEMES, *HTTP_SCHEMES)
_SAFE_PATH = re.compile(r"^[A-Za-z0-9._~/%:@+,=-]*$")
_SAFE_QUERY = re.compile(r"^[A-Za-z0-9._~/%:@+,=&-]*$")


def check_url(url: str) -> None:
    """Refuse (``ValueError``, one line naming it) a shard URL that is not a plain path or a URI
    of a known scheme with only safe characters (``data/tar_stream.py``: nothing reaches a shell)."""
    scheme = scheme_of(url)
    if scheme is None:
        return  # a plain path: opened with open(), whatever its characters
    if scheme not in KNOWN_SCHEMES:
        raise ValueError(
            f"data: shard URL {url!r} has scheme {scheme!r}, not one of {', '.join(KNOWN_SCHEMES)} "
            "(shards are read without a shell: pipe: commands are not run)"
        )
    path, _, query = url.partition("?")
    if not _SAFE_PATH.match(path) or not _SAFE_QUERY.match(query):
        raise ValueError(
            f"data: shard URL {url!r} holds characters that are not part of a file's URI "
            "(allowed: letters, digits and ._~/%:@+,=- ; & only in the ?query)"
        )


def open_input(url: str) -> Any:
    """A binary stream of a shard: a local file, a ``pyarrow.fs`` URI, or http(s) through urllib.

    No command and no shell is involved. Raises ``OSError`` when the shard cannot be opened.
    """
    check_url(url)
    local = local_path(url)
    if local is not None:
        return local.open("rb")
    if scheme_of(url) in HTTP_SCHEMES:
        return urllib.request.urlopen(url, timeout=60)  # the scheme is checked above
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(url)
    except Exception as err:  # pyarrow raises ArrowInvalid (a ValueError) for a URI it cannot open
        raise OSError(f"cannot open {url}: {err}") from err
    return fs.open_input_stream(path)
