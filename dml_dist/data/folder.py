"""Image folders -> shard samples: every leaf folder holding images is one class.

Nested folders are allowed (``alphabet/character/*.png``); a class is named by its path
relative to the source and labelled by its position in the sorted list of class paths.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

from dml_dist.data.shard_layout import IMAGE_SUFFIXES
from dml_dist.data.shard_writer import Sample


def folder_classes(source: str | Path) -> list[tuple[str, list[Path]]]:
    """(class path, sorted image files) of every leaf class folder under ``source``, sorted by path."""
    source = Path(source)
    if not source.is_dir():
        raise ValueError(f"shards: source folder {source} does not exist")
    by_folder: dict[Path, list[Path]] = {}
    for path in source.rglob("*"):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            by_folder.setdefault(path.parent, []).append(path)
    if not by_folder:
        raise ValueError(f"shards: no images found under {source}")
    return [(str(folder.relative_to(source)), sorted(files)) for folder, files in sorted(by_folder.items())]


def read_file(path: str) -> bytes:
    """The bytes of a file (a module-level function, so a ``Sample`` stays picklable)."""
    return Path(path).read_bytes()


def file_samples(items: Iterable[tuple[int, Path]]) -> list[Sample]:
    """(label, image file) pairs -> samples grouped by label, keyed ``c<label>_<index>``.

    The file's size and modification time enter the sample's origin, so a changed image makes a
    re-run rewrite the shards instead of skipping them.
    """
    samples: list[Sample] = []
    counts: dict[int, int] = {}
    for label, path in sorted(items, key=lambda item: (item[0], str(item[1]))):
        index = counts.get(label, 0)
        counts[label] = index + 1
        if not path.is_file():
            raise ValueError(f"shards: image {path} does not exist")
        stat = path.stat()
        ext = path.suffix.lower().lstrip(".") or "png"
        samples.append(
            Sample(
                label=label,
                key=f"c{label:06d}_{index:04d}",
                read=functools.partial(read_file, str(path)),
                ext="jpg" if ext == "jpeg" else ext,
                origin=f"{path}:{stat.st_size}:{stat.st_mtime_ns}",
                path=str(path),
            )
        )
    return samples
