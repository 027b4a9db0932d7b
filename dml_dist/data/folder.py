"""Image folders -> shard samples: every leaf folder holding images is one class.

Nested folders are allowed (``alphabet/character/*.png``); a class is named by its path
relative to the source and labelled by its position in the sorted list of class paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from dml_dist.data.shards import Sample
from dml_dist.eval.embed import IMAGE_SUFFIXES


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


def folder_samples(classes: list[tuple[str, list[Path]]]) -> Iterator[Sample]:
    for label, (_, files) in enumerate(classes):
        for index, path in enumerate(files):
            yield Sample(label=label, key=f"c{label:06d}_{index:04d}", png=path.read_bytes())
