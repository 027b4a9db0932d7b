"""WebDataset shards plus a class index, written once and read by class or as a stream.

A shard directory holds:
- ``shard-NNNNNN.tar``: WebDataset tar files; sample ``c000042_0003`` has members
  ``c000042_0003.png`` (the image) and ``c000042_0003.cls`` (its integer label as text).
  Samples are written class by class, so picking N classes touches few shards.
- ``class_index.json``: for every class, the (shard, byte offset, byte size) of each image
  member's data inside its tar, so a reader seeks straight to an image (indexed access).
- ``manifest.json``: counts and the source; written last, so a directory without it is
  incomplete and is never read (the whole directory is also built under a temporary name and
  renamed into place).

Indexed access (``IndexedShards``) serves the class-driven sampler: a step reads only the
N x K images it needs. Streaming (``stream_samples``) reads shards front to back with
webdataset, as evaluation does.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import webdataset as wds

CLASS_INDEX = "class_index.json"
MANIFEST = "manifest.json"
SHARD_PATTERN = "shard-%06d.tar"


@dataclass(frozen=True)
class Sample:
    """One image to write: its label, its key inside the shard and its PNG bytes."""

    label: int
    key: str
    png: bytes


def is_complete(directory: str | Path) -> bool:
    """True when ``directory`` holds a finished shard set (its manifest exists)."""
    return (Path(directory) / MANIFEST).is_file()


def write_shards(
    samples: Iterable[Sample],
    directory: str | Path,
    samples_per_shard: int,
    source: dict[str, Any],
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``samples`` (grouped by class) as shards + index + manifest, atomically.

    The directory is built as ``<directory>.partial`` and renamed when complete, so an
    interrupted run leaves nothing a reader would accept. Returns the final directory.
    """
    final = Path(directory)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    num_samples = 0
    with wds.ShardWriter(str(partial / SHARD_PATTERN), maxcount=samples_per_shard, verbose=0) as writer:
        for sample in samples:
            writer.write({"__key__": sample.key, "png": sample.png, "cls": str(sample.label)})
            num_samples += 1
            if progress is not None:
                progress(num_samples)
    shards = sorted(p.name for p in partial.glob("shard-*.tar"))
    index = build_class_index(partial, shards)
    (partial / CLASS_INDEX).write_text(json.dumps(index))
    manifest = {
        "num_samples": num_samples,
        "num_classes": len(index["classes"]),
        "num_shards": len(shards),
        "source": source,
    }
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    return final


def build_class_index(directory: Path, shards: list[str]) -> dict[str, Any]:
    """Scan the tars: label -> [[shard position, data offset, data size], ...] of its images."""
    classes: dict[str, list[list[int]]] = {}
    for shard_pos, name in enumerate(shards):
        labels: dict[str, int] = {}
        images: dict[str, list[int]] = {}
        with tarfile.open(directory / name) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if ext == "cls":
                    handle = tar.extractfile(member)
                    assert handle is not None
                    labels[key] = int(handle.read())
                elif ext == "png":
                    images[key] = [shard_pos, member.offset_data, member.size]
        for key, entry in images.items():
            classes.setdefault(str(labels[key]), []).append(entry)
    return {"shards": shards, "classes": classes}


class IndexedShards:
    """Random access to a shard directory's images by (class position, sample position).

    Class positions are 0..C-1 over the sorted labels; the mining bank and the sampler work in
    positions, the loss in labels. File handles open lazily per process, so the object pickles
    (to Ray workers, DataLoader workers) without them.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not is_complete(self.directory):
            raise ValueError(f"data: {self.directory} is not a complete shard directory (no {MANIFEST})")
        index = json.loads((self.directory / CLASS_INDEX).read_text())
        self.shards: list[str] = index["shards"]
        self.labels: list[int] = sorted(int(label) for label in index["classes"])
        self.entries: list[list[list[int]]] = [index["classes"][str(label)] for label in self.labels]
        self._handles: dict[int, Any] = {}

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def class_sizes(self) -> list[int]:
        return [len(entries) for entries in self.entries]

    def read(self, class_pos: int, sample_pos: int) -> bytes:
        """The encoded image bytes of one sample."""
        shard_pos, offset, size = self.entries[class_pos][sample_pos]
        handle = self._handles.get(shard_pos)
        if handle is None:
            handle = open(self.directory / self.shards[shard_pos], "rb")  # noqa: SIM115 (cached)
            self._handles[shard_pos] = handle
        handle.seek(offset)
        return handle.read(size)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


def shard_urls(directory: str | Path) -> list[str]:
    """The tar files of a complete shard directory, in order."""
    directory = Path(directory)
    if not is_complete(directory):
        raise ValueError(f"data: {directory} is not a complete shard directory (no {MANIFEST})")
    return [str(p) for p in sorted(directory.glob("shard-*.tar"))]


def every_shard(urls: Iterable[Any]) -> Iterator[Any]:
    """Node splitter that keeps every shard: the caller alone reads the whole set (evaluation)."""
    yield from urls


def stream_samples(directory: str | Path) -> Iterator[tuple[bytes, int]]:
    """(image bytes, label) of every sample, read front to back with webdataset."""
    dataset = wds.WebDataset(
        shard_urls(directory), shardshuffle=False, empty_check=False, nodesplitter=every_shard
    ).to_tuple("png", "cls")
    for png, cls in dataset:
        yield png, int(cls)
