"""Class-driven batch loading: each rank gets exactly its N/W classes x K images for a step.

Two modes (``data.mode``), with the trade-off the README states:

- ``indexed`` (``ClassBatchLoader``): the step's classes come from outside (the mining service or
  random classes). The pure sampler ``rank_share`` turns them into this rank's (class, sample)
  pairs and the class index locates each image inside its shard, so a step reads exactly its
  N x K images and nothing else, whatever the size of the data set. It needs random access to
  the shard files (a local or network file system) and the class index.
- ``streaming`` (``StreamingClassLoader``): for shards that can only be read front to back (a
  ``pipe:`` command, http, gs or s3 URLs) or have no index. Shards are divided between ranks and
  then between DataLoader workers; decoded images go into per-class buffers and a step takes the
  first N/W classes whose buffer holds K images. Every rank still gets exactly N/W x K rows, and
  since ``dml-dist shards`` keeps a class inside one shard, ranks never share a class. The data,
  not the mining service, picks the classes (mining must be off), every image is decoded once
  per pass whether or not it is used, and memory holds up to ``stream_buffer_samples`` images.

Decoding and augmentation run in ``data.loader_workers`` torch DataLoader worker processes
(0 = in the training process, the default for small CPU runs). In indexed mode the loader is a
persistent-worker DataLoader whose "epoch" is one step: ``prefetch(step, classes)`` starts the
workers on a step as soon as its classes are known, so decoding overlaps the current step, and
``load`` collects it. Each row's augmentation is seeded by (seed, step, row), so the batch is the
same whichever process decodes it. Memory is pinned only when CUDA is available (the training
loop copies with ``non_blocking=True``).

Bad samples (cut-short shards, undecodable images) are replaced by the next sample of the same
class and counted; a class with no decodable image at all gives a blank image, also counted.
A class with fewer than K images is sampled with replacement or excluded
(``data.min_images_policy``), said once at start.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from dml_dist.config import DataConfig
from dml_dist.data.images import decode_image
from dml_dist.data.sampler import rank_share
from dml_dist.data.shards import (
    BadSample,
    IndexedShards,
    expand_urls,
    is_complete,
    is_remote,
    iter_tar_samples,
    read_manifest,
    record_skip,
    skipped_samples_total,
)
from dml_dist.data.shards import add_skipped as _add_skipped

log = logging.getLogger("dml_dist.data")

Row = tuple[int, int, int, int]
"""(class index in the shard directory, sample position, step, row in the batch)."""


@dataclass(frozen=True)
class DecodeSpec:
    """How a training image is decoded: side, channels, augmentation."""

    image_size: int
    channels: int = 1
    augment: str = "none"

    @classmethod
    def from_config(cls, data: DataConfig) -> DecodeSpec:
        return cls(data.decode_size, data.channels, data.augment)

    def decode(self, data: bytes, seed: int, step: int, row: int) -> np.ndarray:
        rng = np.random.default_rng([seed, step, row, 3]) if self.augment != "none" else None
        return decode_image(data, self.image_size, self.channels, self.augment, rng)

    def blank(self) -> np.ndarray:
        return np.zeros((self.channels, self.image_size, self.image_size), dtype=np.float32)


def _reported_skips(before: int) -> int:
    """Skips to hand back to the main process: those counted in a worker process since ``before``."""
    return skipped_samples_total() - before if get_worker_info() is not None else 0


# ----------------------------------------------------------------------------- indexed
class ShareDataset(Dataset):
    """Map-style dataset whose index is a chunk of rows; returns (images [n, C, S, S], skips)."""

    def __init__(self, shards: IndexedShards, spec: DecodeSpec, seed: int):
        self.shards, self.spec, self.seed = shards, spec, seed

    def __len__(self) -> int:
        return sum(self.shards.class_sizes())

    def __getitem__(self, chunk: Sequence[Row]) -> tuple[torch.Tensor, int]:  # type: ignore[override]
        before = skipped_samples_total()
        arrays = [self.decode_row(*row) for row in chunk]
        return torch.from_numpy(np.stack(arrays)), _reported_skips(before)

    def decode_row(self, class_index: int, sample_pos: int, step: int, row: int) -> np.ndarray:
        """The row's image; a bad sample is replaced by the next one of the same class."""
        size = len(self.shards.entries[class_index])
        for attempt in range(size):
            pos = (sample_pos + attempt) % size
            try:
                return self.spec.decode(self.shards.read(class_index, pos), self.seed, step, row)
            except BadSample as err:
                record_skip(err.shard, err.key, err.reason)
            except Exception as err:  # PIL raises several types for undecodable or truncated images
                record_skip(*self.shards.where(class_index, pos), f"undecodable image ({type(err).__name__}: {err})")
        record_skip(
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
            images, _ = self.dataset[self.rows(step, classes, share)]
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
        _add_skipped(sum(skips for _, skips in parts))
        return torch.cat([images for images, _ in parts]), labels

    def close(self) -> None:
        self._pending = None
        self._dataloader = None


# ----------------------------------------------------------------------------- streaming
class StreamDataset(IterableDataset):
    """This rank's and this worker's shards, front to back, in chunks of up to ``CHUNK`` samples:
    (labels [n], images [n, C, S, S], skips). Chunks, not single samples, cross the worker queue."""

    CHUNK = 64

    def __init__(self, urls: list[str], spec: DecodeSpec, seed: int, rank: int, world_size: int):
        self.urls, self.spec, self.seed = urls, spec, seed
        self.rank, self.world_size = rank, world_size
        self.passes = 0

    def my_urls(self) -> list[str]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.urls[self.rank :: self.world_size][worker::num_workers]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        self.passes += 1  # persistent workers keep this copy, so each pass augments differently
        for url in self.my_urls():
            before = skipped_samples_total()
            name = url if is_remote(url) else Path(url).name
            labels: list[int] = []
            images: list[np.ndarray] = []
            for key, label, data in iter_tar_samples(url):
                try:
                    image = self.spec.decode(data, self.seed, self.passes, zlib.crc32(f"{url}/{key}".encode()))
                except Exception as err:
                    record_skip(name, key, f"undecodable image ({type(err).__name__}: {err})")
                    continue
                labels.append(label)
                images.append(image)
                if len(labels) == self.CHUNK:
                    yield self._chunk(labels, images), _reported_skips(before)  # type: ignore[misc]
                    before, labels, images = skipped_samples_total(), [], []
            yield self._chunk(labels, images), _reported_skips(before)  # type: ignore[misc]

    def _chunk(self, labels: list[int], images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        stacked = np.stack(images) if images else np.zeros((0, self.spec.channels, 1, 1), np.float32)
        return torch.tensor(labels, dtype=torch.int64), torch.from_numpy(stacked)


class StreamingClassLoader:
    """Streaming class-driven loader with per-class buffers (see the module docstring)."""

    def __init__(
        self,
        spec_or_urls: str | Path | Sequence[str],
        spec: DecodeSpec,
        *,
        seed: int,
        images_per_class: int,
        world_size: int,
        rank: int,
        num_workers: int = 0,
        min_images_policy: str = "replace",
        buffer_samples: int = 20000,
        num_classes: int = 0,
    ):
        urls = expand_urls(spec_or_urls)
        if len(urls) < world_size:
            raise ValueError(
                f"data.train_shards: streaming divides shards between ranks, but there are {len(urls)} shards "
                f"for {world_size} workers; write smaller shards (--samples-per-shard)"
            )
        self.seed, self.k, self.world_size, self.rank = seed, images_per_class, world_size, rank
        self.policy, self.buffer_samples = min_images_policy, buffer_samples
        self.num_classes = num_classes
        self.dataset = StreamDataset(urls, spec, seed, rank, world_size)
        self._dataloader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
        self.buffers: dict[int, list[torch.Tensor]] = {}
        self.ready: dict[int, bool] = {}  # label -> sample with replacement; insertion order = FIFO
        self._seen: dict[int, int] = {}
        self._iter: Iterator[Any] | None = None
        self._pass_ready = 0
        self._said: set[str] = set()

    def prefetch(self, step: int, classes: Sequence[int]) -> None:
        """Nothing to do: the DataLoader already reads ahead in the stream."""

    def load(self, step: int, classes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """N/W buffered classes x K images; only the number of ``classes`` is used."""
        need = len(classes) // self.world_size
        while len(self.ready) < need:
            self._pull(need)
        rng = np.random.default_rng([self.seed, step, self.rank, 4])
        images: list[torch.Tensor] = []
        labels: list[int] = []
        for label in list(self.ready)[:need]:
            buffer = self.buffers[label]
            with_replacement = self.ready.pop(label)
            picks = rng.choice(len(buffer), size=self.k, replace=with_replacement)
            images += [buffer[i] for i in picks]
            labels += [label] * self.k
            if with_replacement:
                del self.buffers[label]
            else:
                taken = set(int(i) for i in picks)
                self.buffers[label] = [image for i, image in enumerate(buffer) if i not in taken]
                if len(self.buffers[label]) >= self.k:
                    self.ready[label] = False
        return torch.stack(images), torch.tensor(labels, dtype=torch.int64)

    def _pull(self, need: int) -> None:
        if self._iter is None:
            self._iter = iter(self._dataloader)
            self._seen, self._pass_ready = {}, 0
        try:
            (labels, images), skips = next(self._iter)
        except StopIteration:
            self._end_of_pass(need)
            return
        _add_skipped(int(skips))
        for label, image in zip(labels.tolist(), images, strict=True):
            buffer = self.buffers.setdefault(label, [])
            buffer.append(image)
            self._seen[label] = self._seen.get(label, 0) + 1
            if len(buffer) >= self.k and label not in self.ready:
                self.ready[label] = False
                self._pass_ready += 1
        while sum(len(b) for b in self.buffers.values()) > self.buffer_samples:
            self._evict()

    def _evict(self) -> None:
        """Drop the oldest buffer that is not ready (its images come back next pass)."""
        victim = next((label for label in self.buffers if label not in self.ready), None)
        if victim is None:
            victim = next(iter(self.ready))
            del self.ready[victim]
        del self.buffers[victim]
        self._say_once("evict", f"data: per-class buffers exceed data.stream_buffer_samples={self.buffer_samples}")

    def _end_of_pass(self, need: int) -> None:
        self._iter = None
        small = [label for label, seen in self._seen.items() if seen < self.k]
        if small:
            action = "sampled with replacement" if self.policy == "replace" else "excluded"
            self._say_once(
                "small", f"data: {len(small)} streamed classes have fewer than K={self.k} images; they are {action}"
            )
        for label in small:
            if self.policy == "replace" and self.buffers.get(label):
                self.ready[label] = True
                self._pass_ready += 1
            else:
                self.buffers.pop(label, None)
        if self._pass_ready == 0 and len(self.ready) < need:
            raise ValueError(
                f"data: the shards of rank {self.rank} hold fewer than {need} classes with K={self.k} images "
                f"(batch.num_classes / train.workers); use fewer classes per batch or more data"
            )

    def _say_once(self, what: str, message: str) -> None:
        if what not in self._said:
            self._said.add(what)
            log.warning(message)

    def close(self) -> None:
        self._iter = None


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
        if is_remote(train_shards) or not Path(train_shards).is_dir():
            raise ValueError(f"data.train_shards: indexed mode needs a local shard directory, got {train_shards}")
        return ClassBatchLoader(IndexedShards(train_shards), spec, **common)
    if not is_remote(train_shards) and is_complete(train_shards):
        num_classes = int(read_manifest(train_shards)["num_classes"])
    return StreamingClassLoader(
        train_shards, spec, buffer_samples=data.stream_buffer_samples, num_classes=num_classes, **common
    )
