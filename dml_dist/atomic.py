"""Atomic file writes: a reader sees the old file or the whole new one, never half of one.

Every writer of a file that another process may read while it changes (run files, checkpoint
manifests, the mining bank, shards) goes through :func:`atomic_path`: write to ``NAME.tmp`` beside
the target, then ``os.replace``, which is atomic on one POSIX file system (NFS included).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path``.

    ``suffix`` keeps a file extension some writers insist on (``np.savez`` appends ``.npz``).
    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(path.name + suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(data, indent=indent))
