"""A built data set -> a shard set with a train/held-out split by class (``OUT/train``, ``OUT/test``).

Every builder (``typefaces``, ``symbols``, ``icons``) returns a ``BuiltSet``: classes in a fixed
order (code point, icon name), each with its images and their styles (font family, icon theme). Class ``c`` gets label
``c``; the held-out classes are a seeded random ``holdout`` share of the labels, fixed by
(seed, number of classes), so train and test never share a class.

The shards go through the project's writer (``data/shard_writer.py``: atomic, resumable,
fingerprinted), with the class names in the class index and, in the manifest's ``source``:
the packages and versions the images came from, the build settings, and ``styles`` (style ->
sample keys), so an evaluation can query one style against the others. Nothing in a manifest
depends on the time or the output path: the same packages and settings give byte-identical
shard sets.

Cache: when both splits are complete and their manifests record the same build (set, settings,
package versions, generator version), ``write_set`` returns without drawing anything.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dml_dist.data.shard_layout import is_complete, read_manifest
from dml_dist.data.shard_writer import Sample, write_shards
from dml_dist.observability.progress import progress_bar

SPLITS = ("train", "test")


@dataclass(frozen=True)
class StyledImage:
    """One encoded image of a class, the style it is drawn in, and what it was drawn from."""

    png: bytes
    style: str
    origin: str


@dataclass(frozen=True)
class ImageClass:
    name: str
    images: tuple[StyledImage, ...]


@dataclass(frozen=True)
class BuildSettings:
    """Everything a set's content depends on besides the packages: it names the cache entry."""

    name: str
    tiny: bool
    image_size: int
    seed: int
    holdout: float
    generator_version: int

    def as_dict(self, packages: dict[str, str]) -> dict[str, Any]:
        return {**asdict(self), "packages": packages}


@dataclass(frozen=True)
class BuiltSet:
    settings: BuildSettings
    packages: dict[str, str]
    classes: list[ImageClass]
    channels: int


def check_holdout(holdout: float) -> None:
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"--holdout: expected a share in (0, 1), got {holdout}")


def split_by_class(num_classes: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """(train labels, held-out labels), both sorted: a seeded random ``holdout`` share held out."""
    check_holdout(holdout)
    num_test = max(1, round(holdout * num_classes))
    if num_test >= num_classes:
        raise ValueError(f"--holdout: {num_classes} classes are too few to hold out {holdout:.0%} of them")
    order = np.random.default_rng(seed).permutation(num_classes)
    return sorted(int(c) for c in order[num_test:]), sorted(int(c) for c in order[:num_test])


def is_cached(out: Path, build: dict[str, Any]) -> bool:
    """True when both splits under ``out`` are complete shard sets of this very build."""
    return all(is_complete(out / s) and read_manifest(out / s)["source"].get("build") == build for s in SPLITS)


def the_bytes(data: bytes) -> bytes:
    """``data`` itself: a ``Sample.read`` for an image already encoded (module level: picklable)."""
    return data


def write_set(built: BuiltSet, out: Path, samples_per_shard: int) -> list[dict[str, Any]]:
    """Write both splits of ``built`` under ``out``; one summary per split (as ``dml-dist shards``)."""
    settings = built.settings
    train, test = split_by_class(len(built.classes), settings.holdout, settings.seed)
    summaries = []
    for split, labels in zip(SPLITS, (train, test), strict=True):
        samples, styles = _split_samples(built.classes, labels)
        source = {
            "format": f"datasets:{settings.name}",
            "split": split,
            "build": settings.as_dict(built.packages),
            "channels": built.channels,
            "styles": styles,
        }
        with progress_bar(len(samples), desc=f"{settings.name} {split}", unit="img") as bar:
            final, written = write_shards(
                samples,
                out / split,
                samples_per_shard,
                source,
                progress=bar.update,
                class_names={label: built.classes[label].name for label in labels},
            )
        manifest = read_manifest(final)
        summaries.append(
            {
                "split": split,
                "directory": str(final),
                "num_samples": manifest["num_samples"],
                "num_classes": manifest["num_classes"],
                "num_styles": len(styles),
                "written": written,
            }
        )
    return summaries


def _split_samples(classes: list[ImageClass], labels: list[int]) -> tuple[list[Sample], dict[str, list[str]]]:
    """The samples of ``labels`` (keyed ``c<label>_<index>``) and style -> keys."""
    samples: list[Sample] = []
    styles: dict[str, list[str]] = {}
    for label in labels:
        for index, image in enumerate(classes[label].images):
            key = f"c{label:06d}_{index:04d}"
            digest = hashlib.sha1(image.png).hexdigest()[:16]
            read: Callable[[], bytes] = functools.partial(the_bytes, image.png)
            samples.append(Sample(label=label, key=key, read=read, origin=f"{image.origin}:{digest}"))
            styles.setdefault(image.style, []).append(key)
    return samples, {style: styles[style] for style in sorted(styles)}
