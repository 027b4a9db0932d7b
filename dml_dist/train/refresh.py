"""The stale-class refresh pass: re-embed classes the batches have not visited for R steps.

Training refreshes the bank for free, but only for the classes it trains on; a class that no
batch has picked for a while keeps an embedding from an older model, and hard-class selection
would trust it. Every ``mining.refresh_every`` steps the service's answer carries the classes
not refreshed for ``mining.refresh_after_steps`` steps (oldest first, never-seen first, at
most ``mining.refresh_max_classes``). The training side embeds ``refresh_images_per_class``
images of each with the current model (no gradient) and publishes them; the bank averages a
class's images.

The pass runs on every rank, each embedding an equal share of the stale classes' images (the
list padded by repeating its last image, whose copies are then dropped), and the shares are
all-gathered; rank 0 publishes. So it costs each rank 1/W of the forward passes, and every rank runs the model the
same number of times, as ZeRO stage 3 needs (its forward gathers parameters collectively).
Cost: about ``refresh_max_classes * refresh_images_per_class / W`` forward-only images per
rank every ``refresh_every`` steps (defaults: 64 images per rank every 10 steps, against 320
forward+backward images per rank per step in the quickstart).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from dml_dist.config.schema import ExperimentConfig
from dml_dist.data.bad_data import BadDataLog, BadSample, read_with_retry
from dml_dist.data.images import decode_image
from dml_dist.data.shard_index import IndexedShards
from dml_dist.distributed import collectives
from dml_dist.mining.class_ids import ClassIds
from dml_dist.mining.client import ClassSource


class IndexedClasses(Protocol):
    """What the pass reads of a rank's indexed loader (``data/indexed_loader.py::ClassBatchLoader``)."""

    @property
    def shards(self) -> IndexedShards: ...
    @property
    def classes(self) -> Sequence[int]:
        """bank_pos -> the shards' class_index (``ClassIds.of_loader``)."""
        ...

    @property
    def class_sizes(self) -> Sequence[int]:
        """bank_pos -> images of the class."""
        ...

    @property
    def bad(self) -> BadDataLog:
        """Where skipped samples are counted."""
        ...


def refresh_samples(
    seed: int, step: int, classes: Sequence[int], class_sizes: Sequence[int], images_per_class: int
) -> list[tuple[int, int]]:
    """(bank_pos, sample) pairs to embed: up to ``images_per_class`` distinct samples per class, seeded."""
    pairs: list[tuple[int, int]] = []
    for bank_pos in classes:
        size = class_sizes[bank_pos]
        rng = np.random.default_rng([seed, step, 3, bank_pos])
        for sample_pos in rng.choice(size, size=min(size, images_per_class), replace=False):
            pairs.append((int(bank_pos), int(sample_pos)))
    return pairs


@torch.no_grad()
def embed_samples(
    model: torch.nn.Module,
    shards: IndexedShards,
    pairs: Sequence[tuple[int, int]],
    image_size: int,
    channels: int,
    device: torch.device,
    dtype: torch.dtype,
    bad: BadDataLog,
    interpolation: str = "bilinear",
) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings [M, D] of the usable samples among (class_index, sample) ``pairs`` and
    their ``class_index`` [M].

    A sample cut short or undecodable is skipped and counted in ``bad`` (its class keeps its older
    embedding, or stays stale); a storage error is retried and then raised, failing the step
    (``data/bad_data.py``)."""
    arrays: list[np.ndarray] = []
    classes: list[int] = []
    for class_index, sample_pos in pairs:
        shard, key = shards.where(class_index, sample_pos)
        try:
            data = read_with_retry(functools.partial(shards.read, class_index, sample_pos), f"{shard} ({key})")
        except BadSample as err:
            bad.skip(err.shard, err.key, err.reason)
            continue
        try:
            arrays.append(decode_image(data, image_size, channels, interpolation=interpolation))
        except Exception as err:  # PIL raises several types for undecodable or truncated images
            bad.skip(shard, key, f"undecodable image ({type(err).__name__}: {err})")
            continue
        classes.append(class_index)
    if not arrays:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    images = torch.from_numpy(np.stack(arrays)).to(device, dtype)
    was_training = model.training
    model.eval()
    try:
        emb_MD = F.normalize(model(images).float(), dim=1)
    finally:
        model.train(was_training)
    return np.asarray(classes, dtype=np.int64), emb_MD.cpu().numpy()


def embed_across_ranks(
    model: torch.nn.Module,
    loader: IndexedClasses,
    pairs: Sequence[tuple[int, int]],
    config: ExperimentConfig,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[np.ndarray, np.ndarray]:
    """(bank_pos [M], unit embeddings [M, D]) of the readable samples among (bank_pos, sample)
    ``pairs``, in their order, on every rank; each rank embeds an equal share without gradient.

    Every rank must call it with the same ``pairs``. The shares are padded by repeating the last
    pair, so every rank runs one forward pass (ZeRO stage 3's forward is collective); the padding
    rows are dropped, so no image counts twice. Bad samples are skipped and counted in
    ``loader.bad`` (``embed_samples``).
    """
    world, rank = collectives.world_size(), collectives.rank()
    padded = list(pairs) + [pairs[-1]] * (-len(pairs) % world)
    per_rank = len(padded) // world
    mine = padded[rank * per_rank : (rank + 1) * per_rank]
    class_ids = ClassIds.of_loader(loader)
    index_pairs = [(class_ids.class_index_of([p])[0], s) for p, s in mine]
    data = config.data
    class_index_M, emb_MD = embed_samples(
        model,
        loader.shards,
        index_pairs,
        data.decode_size,
        data.channels,
        device,
        dtype,
        loader.bad,
        data.resize_filter,
    )
    # Fixed-size rows so the all-gather lines up; rows of unreadable samples and of the padding keep -1.
    real = min(len(class_index_M), max(0, len(pairs) - rank * per_rank))
    classes_R = torch.full((per_rank,), -1, dtype=torch.int64)
    emb_RD = torch.zeros(per_rank, config.model.embedding_dim, dtype=torch.float32)
    if real:
        classes_R[:real] = torch.tensor(class_ids.bank_pos_of(class_index_M[:real].tolist()), dtype=torch.int64)
        emb_RD[:real] = torch.from_numpy(emb_MD[:real])
    all_classes = collectives.gather_no_grad(classes_R.to(device)).cpu().numpy()
    all_emb = collectives.gather_no_grad(emb_RD.to(device)).cpu().numpy()
    keep = all_classes >= 0
    return all_classes[keep], all_emb[keep]


def refresh_stale_classes(
    model: torch.nn.Module,
    loader: IndexedClasses,
    class_source: ClassSource,
    step: int,
    stale: Sequence[int],
    config: ExperimentConfig,
    device: torch.device,
    dtype: torch.dtype,
) -> int:
    """Embed ``refresh_images_per_class`` images of each ``stale`` class (``bank_pos``), the
    ranks sharing the work (``embed_across_ranks``), and publish them through ``class_source``
    (``RandomClasses`` publishes nothing; the mining client publishes from rank 0).

    Every rank must call it with the same ``stale`` list (part of the broadcast answer).
    ``loader`` is the rank's indexed loader (``ClassBatchLoader``): ``ClassIds.of_loader`` maps
    its ``bank_pos`` to the shards' ``class_index``, ``loader.class_sizes`` sizes the classes.
    Returns the number of classes refreshed (0 when ``stale`` is empty).
    """
    if not stale:
        return 0
    images_per_class = config.mining.refresh_images_per_class
    pairs = refresh_samples(config.train.seed, step, stale, loader.class_sizes, images_per_class)
    classes_M, emb_MD = embed_across_ranks(model, loader, pairs, config, device, dtype)
    class_source.publish(step, classes_M, emb_MD)
    return len(set(stale))
