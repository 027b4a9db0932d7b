"""Resolve the configured data into shard directories, generating the procedural set only when no
data is given.

The rules (``resolve_data``), checked before anything is generated:
- neither ``data.train_shards`` nor ``data.eval_shards``: the procedural set (written once under
  ``data.cache_dir``), said as such by ``DataPaths.describe`` on the ``train:`` line;
- ``data.train_shards`` a root written by ``dml-dist shards`` (``ROOT/train``, ``ROOT/test``): its
  ``train`` split, and its ``test`` split unless ``data.eval_shards`` is given;
- ``data.train_shards`` one shard directory: ``data.eval_shards`` must be given too (a generated
  held-out set beside real training data would evaluate on the wrong images);
- only ``data.eval_shards``: refused (there is nothing to train on but generated images).
Every given path must exist and hold shards; a folder of images is told to run ``dml-dist shards``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dml_dist import storage
from dml_dist.config import DataConfig, ProceduralDataConfig
from dml_dist.data.procedural import render_png, split_classes
from dml_dist.data.shard_layout import IMAGE_SUFFIXES, MANIFEST, is_complete, read_manifest
from dml_dist.data.shard_writer import Sample, write_shards
from dml_dist.data.tar_stream import expand_urls
from dml_dist.observability.progress import progress_bar

_GENERATOR_VERSION = 1


@dataclass(frozen=True)
class DataPaths:
    """Shard directories of one experiment: training classes and held-out classes.

    In streaming mode ``train`` may also be a shard spec that is not a local directory: a brace
    pattern or a remote URI (``data/tar_stream.py``), read by the streaming loader. ``generated``:
    both are the procedural set (no data was given).
    """

    train: Path | str
    eval: Path
    generated: bool = False

    @property
    def train_directory(self) -> Path | None:
        """The training shard directory on this machine; None for a stream spec (pattern or remote URI)."""
        return self.train if isinstance(self.train, Path) else None

    def describe(self) -> str:
        """What the run trains and evaluates on, with the classes of each split (the ``train:`` line)."""
        kind = "generated procedural glyphs (no --data given)" if self.generated else "shards"
        return f"data: {kind}: train {_split_text(self.train)}; held out {_split_text(self.eval)}"


def _split_text(directory: Path | str) -> str:
    if isinstance(directory, Path) and is_complete(directory):
        return f"{directory} ({read_manifest(directory).get('num_classes', '?')} classes)"
    return str(directory)


def resolve_data(config: DataConfig) -> DataPaths:
    """The train and eval shard directories (see the module docstring); writes the procedural set
    when no data is given and it is not cached yet."""
    if config.train_shards and _is_stream_spec(config.train_shards):
        return _resolve_stream(config)
    if config.train_shards is None and config.eval_shards is None:
        procedural = ensure_procedural(config.procedural, Path(config.cache_dir), config.samples_per_shard)
        # Absolute: Ray Train runs each worker in a directory of its own, not the driver's.
        procedural = procedural.resolve()
        return DataPaths(train=procedural / "train", eval=procedural / "test", generated=True)
    if config.train_shards is None:
        raise ValueError(
            f"data.train_shards: data.eval_shards is {config.eval_shards} but no training shards are given; "
            "pass --data TRAIN too (generated data is used only when no data is given)"
        )
    train_root = Path(config.train_shards)
    check_shard_path("data.train_shards", train_root, allow_root=True)
    if is_complete(train_root):
        if config.eval_shards is None:
            raise ValueError(
                f"data.eval_shards: {train_root} is one shard directory; pass --eval-data HELD_OUT "
                "(or --data ROOT, where ROOT holds train/ and test/ as `dml-dist shards` writes them)"
            )
        train = train_root
    else:
        train = train_root / "train"
    if config.eval_shards is not None:
        evaluation = Path(config.eval_shards)
        check_shard_path("data.eval_shards", evaluation, allow_root=False)
    else:
        evaluation = train_root / "test"
        if not is_complete(evaluation):
            raise ValueError(
                f"data.eval_shards: {train_root} holds train/ but no test/ split; pass --eval-data HELD_OUT"
            )
    return DataPaths(train=train.resolve(), eval=evaluation.resolve())


def _resolve_stream(config: DataConfig) -> DataPaths:
    """A URL or brace pattern of training shards (streaming mode) and a local held-out directory."""
    assert config.train_shards is not None
    if config.mode != "streaming":
        raise ValueError(
            f"data.train_shards: {config.train_shards} is a URL or shard pattern, which only "
            "data.mode=streaming reads (indexed mode needs a local shard directory)"
        )
    expand_urls(config.train_shards)  # a missing local shard of a pattern fails here, named
    if config.eval_shards is None or not is_complete(config.eval_shards):
        raise ValueError(
            f"data.eval_shards: streaming from {config.train_shards} needs a local held-out shard directory"
        )
    return DataPaths(train=config.train_shards, eval=Path(config.eval_shards).resolve())


def check_shard_path(field: str, path: Path, allow_root: bool) -> None:
    """Raise a one-line ``ValueError`` naming ``field`` unless ``path`` is a shard directory (or,
    with ``allow_root``, a root holding ``train/`` as ``dml-dist shards`` writes it)."""
    if not path.exists():
        raise ValueError(
            f"{field}: {path} does not exist (write shards with `dml-dist shards IMAGES OUT`, then pass --data OUT)"
        )
    if not path.is_dir():
        raise ValueError(f"{field}: {path} is a file, not a shard directory")
    if is_complete(path) or (allow_root and is_complete(path / "train")):
        return
    if _holds_images(path):
        raise ValueError(
            f"{field}: {path} holds images, not shards; run `dml-dist shards {path} OUT` first and pass OUT"
        )
    expected = f"{path / MANIFEST}" + (f" or {path / 'train' / MANIFEST}" if allow_root else "")
    raise ValueError(f"{field}: {path} is not a shard directory (expected {expected}, written by `dml-dist shards`)")


def _holds_images(directory: Path, limit: int = 2000) -> bool:
    """True when an image file lies in ``directory`` or below (the first ``limit`` entries looked at)."""
    for seen, path in enumerate(directory.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return True
        if seen >= limit:
            return False
    return False


def _is_stream_spec(spec: str) -> bool:
    return not storage.is_local(spec) or "{" in spec


def procedural_root(config: ProceduralDataConfig, cache_dir: Path) -> Path:
    """Cache directory named by a hash of the generator's parameters."""
    fingerprint = json.dumps({"version": _GENERATOR_VERSION, **config.model_dump()}, sort_keys=True)
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:12]
    return cache_dir / f"procedural-{digest}"


def ensure_procedural(config: ProceduralDataConfig, cache_dir: Path, samples_per_shard: int) -> Path:
    """Write the procedural train/test shards under ``cache_dir`` unless already complete."""
    root = procedural_root(config, cache_dir)
    train_ids, test_ids = split_classes(config)
    for split, class_ids in (("train", train_ids), ("test", test_ids)):
        if is_complete(root / split):
            continue
        total = len(class_ids) * config.images_per_class
        print(f"data: writing procedural {split} split ({len(class_ids)} classes, {total} images) to {root / split}")
        with progress_bar(total, desc=f"data {split}", unit="img") as bar:
            write_shards(
                list(procedural_samples(config, class_ids)),
                root / split,
                samples_per_shard,
                source={"format": "procedural", "split": split, **config.model_dump()},
                progress=bar.update,
            )
    return root


def procedural_samples(config: ProceduralDataConfig, class_ids: list[int]) -> Iterator[Sample]:
    for class_id in class_ids:
        for index in range(config.images_per_class):
            yield Sample(
                label=class_id,
                key=f"c{class_id:06d}_{index:04d}",
                read=functools.partial(render_png, config, class_id, index),
            )
