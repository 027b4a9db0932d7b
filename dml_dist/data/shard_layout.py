"""The on-disk layout of a shard directory, shared by its writer and its readers.

A shard directory holds:
- ``shard-NNNNNN.tar``: WebDataset tar files; sample ``c000042_0003`` has members
  ``c000042_0003.png`` (or ``.jpg``: the source's own encoding, never re-encoded) and
  ``c000042_0003.cls`` (its integer label as text). Samples are written class by class and a
  class is never split across shards unless it alone is larger than a shard, so picking N
  classes touches at most N shards, and streaming readers that divide shards between ranks see
  every class on one rank only.
- ``class_index.json``: for every class, the (shard, byte offset, byte size, key) of each image
  member's data inside its tar, so a reader seeks straight to an image (indexed access).
- ``manifest.json``: counts, the source, a fingerprint of the input and each class's name
  (``class_names``: label -> name, where the source has names); written last, so a directory
  without it is incomplete and is never read.

Writing: ``data/shard_writer.py``. Reading by class: ``data/shard_index.py``; front to back:
``data/tar_stream.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CLASS_INDEX = "class_index.json"
MANIFEST = "manifest.json"
FINGERPRINT = "fingerprint.txt"
SHARD_PATTERN = "shard-%06d.tar"
BAD_SUFFIX = ".bad.json"
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "gif", "webp")
IMAGE_SUFFIXES = frozenset(f".{ext}" for ext in IMAGE_EXTENSIONS)
"""The image files that ``dml-dist shards`` and ``dml-dist embed`` read from a folder."""


def is_complete(directory: str | Path) -> bool:
    """True when ``directory`` holds a finished shard set (its manifest exists)."""
    return (Path(directory) / MANIFEST).is_file()


def read_manifest(directory: str | Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((Path(directory) / MANIFEST).read_text())
    return manifest


def read_class_names(directory: str | Path) -> dict[int, str]:
    """Label -> class name from a shard set's manifest (empty where the source had no names)."""
    if not is_complete(directory):
        return {}
    return {int(label): name for label, name in read_manifest(directory).get("class_names", {}).items()}


def class_caption(names: dict[int, str], label: int) -> str:
    """How a class is shown to a reader: its name, else ``class <label>``."""
    return names.get(int(label), f"class {label}")


def parse_label(text: str | None) -> int | None:
    """The integer label of a ``.cls`` field; None when it is missing or not an integer."""
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
