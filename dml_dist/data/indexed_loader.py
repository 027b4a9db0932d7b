"""Indexed class-driven loading: a step reads exactly its N x K images, wherever they are.

The step's classes come from outside (the mining service or random classes). The pure sampler
``rank_share`` turns them into this rank's (class, sample) pairs and the class index locates each
image inside its shard (``IndexedShards``), so a step reads its N x K images and nothing else,
whatever the size of the data set. It needs random access to the shard files (a local or
network file system) and the class index.

With ``num_workers > 0`` the loader is a persistent-worker DataLoader whose "epoch" is one step:
``prefetch(step, classes)`` starts the workers on a step as soon as its classes are known, so
decoding overlaps the current step, and ``load`` collects it. Each row's augmentation is seeded
by (seed, step, row), so the batch is the same whichever process decodes it. Memory is pinned
only when CUDA is available (the training loop copies with ``non_blocking=True``).

Bad samples (cut-short shards, undecodable images) are replaced by the next sample of the same
class; a class with no decodable image at all gives a blank image. Each is warned about once and
counted: the dataset counts in its own process and returns its count with the images, the
loader adds it up (``skipped_samples``). A class with fewer than K images is sampled with
replacement or excluded (``min_images_policy``), said once at start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dml_dist.data.bad_data import BadDataLog, BadSample
from dml_dist.data.decode_spec import DecodeSpec
from dml_dist.data.sampler import rank_share
from dml_dist.data.shard_index import IndexedShards

log = logging.getLogger("dml_dist.data")

Row = tuple[int, int, int, int]
"""(class index in the shard directory, sample position, step, row in the batch)."""


class ShareDataset(Dataset):
    """Map-style dataset whose index is a chunk of rows; returns (images [n, C, S, S], skips):
    ``skips`` is the number of bad samples met while decoding the chunk."""

    def __init__(self, shards: IndexedShards, spec: DecodeSpec, seed: int):
        self.shards, self.spec, self.seed = shards, spec, seed
        self.bad = BadDataLog()  # each worker process has its own copy; counts go back with the chunk

    def __len__(self) -> int:
        return sum(self.shards.class_sizes())

    def __getitem__(self, chunk: Sequence[Row]) -> tuple[torch.Tensor, int]:  # type: ignore[override]
        before = self.bad.total
        arrays = [self.decode_row(*row) for row in chunk]
        return torch.from_numpy(np.stack(arrays)), self.bad.total - before

    def decode_row(self, class_index: int, sample_pos: int, step: int, row: int) -> np.ndarray:
        """The row's image; a bad sample is replaced by the next one of the same class."""
        size = len(self.shards.entries[class_index])
        for attempt in range(size):
            pos = (sample_pos + attempt) % size
            try:
                return self.spec.decode(self.shards.read(class_index, pos), self.seed, step, row)
            except BadSample as err:
                self.bad.skip(err.shard, err.key, err.reason)
            except Exception as err:  # PIL raises several types for undecodable or truncated images
                self.bad.skip(*self.shards.where(class_index, pos), f"undecodable image ({type(err).__name__}: {err})")
        self.bad.skip(
            self.shards.shards[0], f"class {self.shards.labels[class_index]}", "no decodable image; blank stands in"
        )
        return self.spec.blank()


class _StepPlan:
    """Sampler of the indexed DataLoader: yields the chunks of the step set just before ``iter``."""

    def __init__(self) -> None:
        self.chunks: list[list[Row]] = []

    def __iter__(self) -> Iterator[list[Row]]:
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)


class ClassBatchLoader:
    """Indexed class-driven loader over a shard directory (see the module docstring).

    Class positions 0..num_classes-1 are over the sorted labels of the usable classes (all of
    them with ``replace``; those with at least K images with ``exclude``).
    """

    def __init__(
        self,
        shards: IndexedShards,
        spec: DecodeSpec,
        *,
        seed: int,
        images_per_class: int,
        world_size: int,
        rank: int,
        num_workers: int = 0,
        min_images_policy: str = "replace",
    ):
        self.shards, self.spec, self.seed = shards, spec, seed
        self.k, self.world_size, self.rank = images_per_class, world_size, rank
        self.num_workers = num_workers
        sizes = shards.class_sizes()
        small = [c for c, size in enumerate(sizes) if size < images_per_class]
        self.classes = list(range(len(sizes)))
        if small:
            action = "sampled with replacement" if min_images_policy == "replace" else "excluded"
            log.warning(
                "data: %d of %d classes have fewer than K=%d images; they are %s (data.min_images_policy=%s)",
                len(small),
                len(sizes),
                images_per_class,
                action,
                min_images_policy,
            )
            if min_images_policy == "exclude":
                dropped = set(small)
                self.classes = [c for c in self.classes if c not in dropped]
        if not self.classes:
            raise ValueError(f"data: no class of {shards.directory} has K={images_per_class} images")
        self.class_sizes = [sizes[c] for c in self.classes]
        self.labels = [shards.labels[c] for c in self.classes]
        self.dataset = ShareDataset(shards, spec, seed)
        self.bad = BadDataLog()
        self._plan = _StepPlan()
        self._pending: tuple[int, tuple[int, ...], Iterator[Any]] | None = None
        self._dataloader: DataLoader | None = None
        if num_workers > 0:
            self._dataloader = DataLoader(
                self.dataset,
                batch_size=None,
                sampler=self._plan,  # type: ignore[arg-type]
                num_workers=num_workers,
                persistent_workers=True,
                pin_memory=torch.cuda.is_available(),
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def skipped_samples(self) -> int:
        """Samples skipped as bad data so far, by this loader and its worker processes."""
        return self.bad.total

    def share(self, step: int, classes: Sequence[int]) -> list[tuple[int, int]]:
        """This rank's (class position, sample position) pairs: ``rank_share`` over usable classes."""
        return rank_share(self.seed, step, classes, self.class_sizes, self.k, self.world_size, self.rank)

    def rows(self, step: int, classes: Sequence[int], share: list[tuple[int, int]] | None = None) -> list[Row]:
        share = self.share(step, classes) if share is None else share
        return [(self.classes[c], s, step, row) for row, (c, s) in enumerate(share)]

    def prefetch(self, step: int, classes: Sequence[int]) -> None:
        """Start decoding ``step`` in the workers (no-op without workers or when one is pending)."""
        if self._dataloader is None or self._pending is not None:
            return
        rows = self.rows(step, classes)
        per_worker = -(-len(rows) // self.num_workers)
        self._plan.chunks = [rows[i : i + per_worker] for i in range(0, len(rows), per_worker)]
        self._pending = (step, tuple(classes), iter(self._dataloader))

    def load(self, step: int, classes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's images [B, C, S, S] and labels [B] for the step's classes."""
        share = self.share(step, classes)
        labels = torch.tensor([self.labels[c] for c, _ in share], dtype=torch.int64)
        if self._dataloader is None:
            images, skips = self.dataset[self.rows(step, classes, share)]
            self.bad.add(skips)
            return images, labels
        if self._pending is not None and self._pending[:2] != (step, tuple(classes)):
            for _ in self._pending[2]:  # a stale prefetch: finish its epoch before starting another
                pass
            self._pending = None
        if self._pending is None:
            self.prefetch(step, classes)
        assert self._pending is not None
        parts = list(self._pending[2])
        self._pending = None
        self.bad.add(sum(skips for _, skips in parts))
        return torch.cat([images for images, _ in parts]), labels

    def close(self) -> None:
        self._pending = None
        self._dataloader = None
