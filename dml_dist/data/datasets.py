"""Resolve the configured data into shard directories, generating the procedural set once."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from dml_dist.config import DataConfig, ProceduralDataConfig
from dml_dist.data.procedural import render_png, split_classes
from dml_dist.data.shard_layout import is_complete
from dml_dist.data.shard_writer import Sample, write_shards
from dml_dist.data.tar_stream import expand_urls, is_remote
from dml_dist.observability.progress import progress_bar

_GENERATOR_VERSION = 1


@dataclass(frozen=True)
class DataPaths:
    """Shard directories of one experiment: training classes and held-out classes.

    In streaming mode ``train`` may also be a shard spec that is not a local directory: a brace
    pattern, a remote URL or a ``pipe:`` command, read by the streaming loader.
    """

    train: Path | str
    eval: Path


def resolve_data(config: DataConfig) -> DataPaths:
    """The train and eval shard directories, writing the procedural set when it is not cached."""
    if config.train_shards and _is_stream_spec(config.train_shards):
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
    train_dir, eval_dir = _split_root(config.train_shards), config.eval_shards
    if train_dir != config.train_shards and eval_dir is None and is_complete(Path(config.train_shards or "") / "test"):
        eval_dir = str(Path(config.train_shards or "") / "test")  # written together by ``dml-dist shards``
    procedural = None
    if train_dir is None or eval_dir is None:
        procedural = ensure_procedural(config.procedural, Path(config.cache_dir), config.samples_per_shard)
    train = Path(train_dir) if train_dir else procedural_split(procedural, "train")
    evaluation = Path(eval_dir) if eval_dir else procedural_split(procedural, "test")
    for field, path in (("data.train_shards", train), ("data.eval_shards", evaluation)):
        if not is_complete(path):
            raise ValueError(f"{field}: {path} is not a shard directory (expected {path}/manifest.json)")
    return DataPaths(train=train.resolve(), eval=evaluation.resolve())


def _is_stream_spec(spec: str) -> bool:
    return is_remote(spec) or "{" in spec


def _split_root(spec: str | None) -> str | None:
    """A shard directory, or the ``train`` directory of a root written by ``dml-dist shards``."""
    if spec is None or is_complete(spec) or not is_complete(Path(spec) / "train"):
        return spec
    return str(Path(spec) / "train")


def procedural_split(root: Path | None, split: str) -> Path:
    assert root is not None
    return root / split


def procedural_root(config: ProceduralDataConfig, cache_dir: Path) -> Path:
    """Cache directory named by a hash of the generator's parameters."""
    fingerprint = json.dumps({"version": _GENERATOR_VERSION, **asdict(config)}, sort_keys=True)
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
                source={"format": "procedural", "split": split, **asdict(config)},
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
