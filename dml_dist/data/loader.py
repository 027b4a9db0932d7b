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
from dml_dist.data.indexed_loader import ClassBatchLoader
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
    local = storage.local_path(train_shards)
    if data.mode == "indexed":
        if local is None or not local.is_dir():
            raise ValueError(f"data.train_shards: indexed mode needs a local shard directory, got {train_shards}")
        return ClassBatchLoader(IndexedShards(local), spec, **common)
    if local is not None and is_complete(local):
        num_classes = int(read_manifest(local)["num_classes"])
    return StreamingClassLoader(
        train_shards, spec, buffer_samples=data.stream_buffer_samples, num_classes=num_classes, **common
    )
