"""Streaming class-driven loading: per-class buffers filled from shards read front to back.

For shards that can only be read front to back (s3, gs, hdfs or http URLs, opened without a
shell: ``data/tar_stream.py``) or have no index. Shards are divided between ranks and then between DataLoader workers; decoded images
go into per-class buffers and a step takes the first N/W classes whose buffer holds K images.
Every rank still gets exactly N/W x K rows, and since ``dml-dist shards`` keeps a class inside
one shard, ranks never share a class. The data, not the mining service, picks the classes
(mining must be off), every image is decoded once per pass whether or not it is used, and
memory holds up to ``buffer_samples`` images.

Bad data (see ``data/tar_stream.py``) and undecodable images are skipped, warned about once and
counted: the dataset counts in its own process and returns its count with each chunk, the
loader adds it up (``skipped_samples``). A class whose images all fail to decode never fills a
buffer, so it is never trained. A storage error (a shard that cannot be opened or read) is
retried and then raised: the step fails (``data/bad_data.py``). A class with fewer than K images in a pass is sampled
with replacement or excluded (``min_images_policy``).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dml_dist import storage
from dml_dist.data.bad_data import BadDataLog
from dml_dist.data.decode_spec import DecodeSpec
from dml_dist.data.tar_stream import expand_urls, iter_tar_samples

log = logging.getLogger("dml_dist.data")

Chunk = tuple[tuple[torch.Tensor, torch.Tensor], int]
"""((labels [n], images [n, C, S, S]), bad samples skipped while reading them)."""


class StreamDataset(IterableDataset):
    """This rank's and this worker's shards, front to back, in chunks of up to ``CHUNK`` samples.
    Chunks, not single samples, cross the worker queue."""

    CHUNK = 64

    def __init__(self, urls: list[str], spec: DecodeSpec, seed: int, rank: int, world_size: int):
        self.urls, self.spec, self.seed = urls, spec, seed
        self.rank, self.world_size = rank, world_size
        self.passes = 0
        self.bad = BadDataLog()  # each worker process has its own copy; counts go back with the chunk

    def my_urls(self) -> list[str]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.urls[self.rank :: self.world_size][worker::num_workers]

    def __iter__(self) -> Iterator[Chunk]:
        self.passes += 1  # persistent workers keep this copy, so each pass augments differently
        for url in self.my_urls():
            before = self.bad.total
            name = storage.display_name(url)
            labels: list[int] = []
            images: list[np.ndarray] = []
            for key, label, data in iter_tar_samples(url, self.bad):
                try:
                    image = self.spec.decode(data, self.seed, self.passes, zlib.crc32(f"{url}/{key}".encode()))
                except Exception as err:  # PIL raises several types for undecodable images
                    self.bad.skip(name, key, f"undecodable image ({type(err).__name__}: {err})")
                    continue
                labels.append(label)
                images.append(image)
                if len(labels) == self.CHUNK:
                    yield self._chunk(labels, images), self.bad.total - before
                    before, labels, images = self.bad.total, [], []
            yield self._chunk(labels, images), self.bad.total - before

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
        self.bad = BadDataLog()
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

    @property
    def skipped_samples(self) -> int:
        """Samples skipped as bad data so far, by this loader and its worker processes."""
        return self.bad.total

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
        self.bad.add(int(skips))
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
