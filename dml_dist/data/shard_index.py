"""Indexed reading of a shard directory: one image by (class position, sample position).

``IndexedShards`` serves the class-driven sampler, so a step reads only its N x K images: the
class index (``class_index.json``, ``data/shard_layout.py``) gives each image's byte range
inside its tar, and a read is one ``pread``. A range cut short raises ``BadSample``; the caller
skips and counts it. An ``OSError`` (missing file, permission, EIO) is a storage error that the
caller retries and then lets fail the step (``data/bad_data.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dml_dist.data.bad_data import BadSample
from dml_dist.data.shard_layout import CLASS_INDEX, MANIFEST, is_complete


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
        """The encoded image bytes of one sample; ``BadSample`` when the shard is cut short,
        ``OSError`` when the shard cannot be opened or read."""
        shard_pos, offset, size = self.entries[class_pos][sample_pos][:3]
        handle = self._handles.get(shard_pos)
        if handle is None:
            handle = open(self.directory / self.shards[shard_pos], "rb")  # noqa: SIM115 (cached)
            self._handles[shard_pos] = handle
        try:
            # pread, not seek + read: forked DataLoader workers share the descriptor and its offset.
            data: bytes = os.pread(handle.fileno(), size, offset)
        except OSError:
            del self._handles[shard_pos]  # a storage error: the caller's retry opens the file afresh
            handle.close()
            raise
        if len(data) != size:
            raise BadSample(*self.where(class_pos, sample_pos), f"truncated: {len(data)} of {size} bytes")
        return data

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state
