"""Where ``dml-dist shards`` may write: only into a new or empty directory, or over a complete
shard set that it wrote itself (a manifest with a fingerprint, nothing else in the directory).

Everything else is refused in one line naming the directory and what is in it, and removal takes
only the files that a writer of a set writes (shards, their bad-file lists, index, manifest), so
nothing that a user put there is ever deleted.
"""

from __future__ import annotations

import re
from pathlib import Path

from dml_dist.data.shard_layout import BAD_SUFFIX, CLASS_INDEX, FINGERPRINT, MANIFEST, is_complete, read_manifest

REPLACED_SUFFIX = ".replaced"
"""Suffix of the old set while a new one is moved in."""
_SHARD_FILE = re.compile(r"shard-\d{6}\.tar(\.tmp|" + re.escape(BAD_SUFFIX) + r")?")


def check_writable(final: Path) -> None:
    """``ValueError`` (one line naming ``final``) unless it is absent, empty, or a complete shard
    set that this writer wrote with nothing else in it: the only directories it may replace."""
    if not final.exists():
        return
    if not final.is_dir():
        raise ValueError(f"shards: {final} is a file; choose a new or empty output directory")
    foreign = foreign_entries(final)
    if not foreign and not any(final.iterdir()):
        return
    if foreign or not _written_by_us(final):
        named = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "") if foreign else "an incomplete set"
        raise ValueError(
            f"shards: {final} holds files that dml-dist shards did not write ({named}); nothing was written: "
            "choose a new or empty output directory"
        )


def _is_written_file(name: str) -> bool:
    """A name that a writer of a shard set writes (shards, their bad-file lists, index, manifest)."""
    return name in (MANIFEST, CLASS_INDEX, FINGERPRINT) or _SHARD_FILE.fullmatch(name) is not None


def foreign_entries(directory: Path) -> list[str]:
    return sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in directory.iterdir()
        if not (p.is_file() and _is_written_file(p.name))
    )


def _written_by_us(directory: Path) -> bool:
    try:
        return is_complete(directory) and "fingerprint" in read_manifest(directory)
    except (OSError, ValueError):  # an unreadable manifest is not ours to replace
        return False


def remove_written(directory: Path) -> None:
    """Delete the files a writer of a set writes, then the directory; anything else in it stays
    (and so does the directory, with a ``ValueError`` naming it)."""
    for path in directory.iterdir():
        if path.is_file() and _is_written_file(path.name):
            path.unlink()
    foreign = foreign_entries(directory)
    if foreign:
        raise ValueError(
            f"shards: {directory} holds files that dml-dist shards did not write ({', '.join(foreign[:3])}); left as it is"
        )
    directory.rmdir()
