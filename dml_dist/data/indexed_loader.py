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
class. A class with no decodable image at all is never trained as blank images under its
label: its rows take the images *and the label* of the next class (by class index) that has a
decodable image, said once per class. Each bad sample is warned about once and counted: the
dataset counts in its own process and returns its count with the images, the loader adds it up
(``skipped_samples``). A storage error (the shard cannot be opened or read) is not bad data: the
read is retried and then fails the step (``data/bad_data.py``). A class with fewer than K images
is sampled with replacement or excluded (``min_images_policy``), said once at start.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dml_dist.data.bad_data import BadDataLog, BadSample, read_with_retry
from dml_dist.data.decode_spec import DecodeSpec
from dml_dist.data.sampler import rank_share
from dml_dist.data.shard_index import IndexedShards

log = logging.getLogger("dml_dist.data")

Row = tuple[int, int, int, int]
"""(class index in the shard directory, sample position, step, row in the batch)."""


class ShareDataset(Dataset):
    """Map-style dataset whose index is a chunk of rows; returns (images [n, C, S, S], class index
    used per row [n], skips): a row's class differs from the one asked only when that class has no
    decodable image; ``skips`` is the number of bad samples met while decoding the chunk."""

    def __init__(self, shards: IndexedShards, spec: DecodeSpec, seed: int):
        self.shards, self.spec, self.seed = shards, spec, seed
        self.bad = BadDataLog()  # each worker process has its own copy; counts go back with the chunk
        self.dead: set[int] = set()  # class indices without a decodable image (found in this process)

    def __len__(self) -> int:
        return sum(self.shards.class_sizes())

    def __getitem__(self, chunk: Sequence[Row]) -> tuple[torch.Tensor, torch.Tensor, int]:  # type: ignore[override]
        before = self.bad.total
        used, arrays = zip(*(self.decode_row(*row) for row in chunk), strict=True)
        return torch.from_numpy(np.stack(arrays)), torch.tensor(used, dtype=torch.int64), self.bad.total - before

    def decode_row(self, class_index: int, sample_pos: int, step: int, row: int) -> tuple[int, np.ndarray]:
        """(class index used, the row's image): a bad sample is replaced by the next one of the same
        class, a class with no decodable image by the next class that has one."""
        num_classes = len(self.shards.entries)
        for shift in range(num_classes):
            candidate = (class_index + shift) % num_classes
            if candidate in self.dead:
                continue
            image = self._first_decodable(candidate, sample_pos, step, row)
            if image is not None:
                return candidate, image
            self.dead.add(candidate)
            log.warning(
                "data: class %d of %s has no decodable image; its rows take the next class's images and label",
                self.shards.labels[candidate],
                self.shards.directory,
            )
        raise ValueError(f"data: no class of {self.shards.directory} has a decodable image")

    def _first_decodable(self, class_index: int, sample_pos: int, step: int, row: int) -> np.ndarray | None:
        """The first decodable image of the class from ``sample_pos`` on (cyclically), or None."""
        size = len(self.shards.entries[class_index])
        for attempt in range(size):
            pos = (sample_pos + attempt) % size
            shard, key = self.shards.where(class_index, pos)
            try:
                data = read_with_retry(functools.partial(self.shards.read, class_index, pos), f"{shard} ({key})")
            except BadSample as err:
                self.bad.skip(err.shard, err.key, err.reason)
                continue
            try:
                return self.spec.decode(data, self.seed, step, row)
            except Exception as err:  # PIL raises several types for undecodable or truncated images
                self.bad.skip(shard, key, f"undecodable image ({type(err).__name__}: {err})")
        return None


class _StepPlan:
    """Sampler of the indexed DataLoader: yields the chunks of the step set just before ``iter``."""

    def __init__(self) -> None:
        self.chunks: list[list[Row]] = []

    def __iter__(self) -> Iterator[list[Row]]:
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)


def usable_classes(sizes: Sequence[int], images_per_class: int, min_images_policy: str) -> list[int]:
    """Positions of the classes a loader trains on: every class (``replace``: a class with fewer
    than K images is sampled with replacement), or (``exclude``) those with at least K images."""
    if min_images_policy == "exclude":
        return [c for c, size in enumerate(sizes) if size >= images_per_class]
    return list(range(len(sizes)))


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
        self.classes = usable_classes(sizes, images_per_class, min_images_policy)
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

    def rows(self, step: int, classes: Sequence[int]) -> list[Row]:
        return [(self.classes[c], s, step, row) for row, (c, s) in enumerate(self.share(step, classes))]

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
        if self._dataloader is None:
            images, used, skips = self.dataset[self.rows(step, classes)]
            self.bad.add(skips)
            return images, self._labels_of(used)
        if self._pending is not None and self._pending[:2] != (step, tuple(classes)):
            for _ in self._pending[2]:  # a stale prefetch: finish its epoch before starting another
                pass
            self._pending = None
        if self._pending is None:
            self.prefetch(step, classes)
        assert self._pending is not None
        parts = list(self._pending[2])
        self._pending = None
        self.bad.add(sum(skips for _, _, skips in parts))
        return torch.cat([images for images, _, _ in parts]), self._labels_of(torch.cat([used for _, used, _ in parts]))

    def _labels_of(self, class_index_B: torch.Tensor) -> torch.Tensor:
        """Labels [B] of the class indices the rows were decoded from."""
        labels = self.shards.labels
        return torch.tensor([labels[c] for c in class_index_B.tolist()], dtype=torch.int64)

    def close(self) -> None:
        self._pending = None
        self._dataloader = None
