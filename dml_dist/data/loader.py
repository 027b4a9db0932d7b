"""Class-driven batch loading: each rank gets exactly its N/W classes x K images for a step.

Two modes (``data.mode``), with the trade-off the README states; ``build_loader`` picks one:

- ``indexed`` (``data/indexed_loader.py: ClassBatchLoader``): the step's classes come from
  outside (the mining service or random classes); the class index locates each image, so a step
  reads exactly its N x K images. Needs random access to the shard files and the class index.
- ``streaming`` (``data/stream_loader.py: StreamingClassLoader``): for shards that can only be
  read front to back (s3, gs, hdfs or http URLs, opened without a shell) or have no index. Decoded images
  go into per-class buffers and a step takes the first N/W classes whose buffer holds K images;
  the data, not the mining service, picks the classes (mining must be off).

Both decode and augment (``data/decode_spec.py``) in ``data.loader_workers`` torch DataLoader
worker processes (0 = in the training process, the default for small CPU runs), take
``prefetch(step, classes)`` and ``load(step, classes) -> (images [B, C, S, S], labels [B])``,
and count the samples they skip as bad data in ``skipped_samples``.
"""

from __future__ import annotations

from typing import Any

from dml_dist import storage
from dml_dist.config import DataConfig
from dml_dist.data.decode_spec import DecodeSpec
from dml_dist.data.indexed_loader import ClassBatchLoader, usable_classes
from dml_dist.data.shard_index import IndexedShards
from dml_dist.data.shard_layout import is_complete, read_manifest
from dml_dist.data.stream_loader import StreamingClassLoader


def build_loader(
    data: DataConfig,
    train_shards: str,
    *,
    seed: int,
    images_per_class: int,
    world_size: int,
    rank: int,
    num_classes: int = 0,
) -> ClassBatchLoader | StreamingClassLoader:
    """The configured loader for a training worker (``data.mode``)."""
    spec = DecodeSpec.from_config(data)
    common: dict[str, Any] = {
        "seed": seed,
        "images_per_class": images_per_class,
        "world_size": world_size,
        "rank": rank,
        "num_workers": data.loader_workers,
        "min_images_policy": data.min_images_policy,
    }
    if data.mode == "indexed":
        return ClassBatchLoader(_indexed_shards(train_shards), spec, **common)
    num_classes = _streamed_classes(train_shards) or num_classes
    return StreamingClassLoader(
        train_shards, spec, buffer_samples=data.stream_buffer_samples, num_classes=num_classes, **common
    )


def training_class_count(data: DataConfig, train_shards: str, images_per_class: int) -> int | None:
    """Classes the workers' loaders will train on, known before they start (the driver checks N
    against it): indexed, the classes ``usable_classes`` keeps; streaming, the manifest's count,
    or None for a stream that does not say (the streaming loader stops with a clear error if it
    runs out of classes)."""
    if data.mode == "streaming":
        return _streamed_classes(train_shards)
    shards = _indexed_shards(train_shards)
    usable = usable_classes(shards.class_sizes(), images_per_class, data.min_images_policy)
    if not usable:
        raise ValueError(f"data: no class of {train_shards} has K={images_per_class} images")
    return len(usable)


def _indexed_shards(train_shards: str) -> IndexedShards:
    local = storage.local_path(train_shards)
    if local is None or not local.is_dir():
        raise ValueError(f"data.train_shards: indexed mode needs a local shard directory, got {train_shards}")
    return IndexedShards(local)


def _streamed_classes(train_shards: str) -> int | None:
    """The manifest's class count of a local shard directory; None for a pattern or a remote stream."""
    local = storage.local_path(train_shards)
    if local is None or not is_complete(local):
        return None
    return int(read_manifest(local)["num_classes"]) or None
