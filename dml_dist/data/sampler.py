"""The class-driven sampler: which (class, sample) pairs each rank trains on at a step.

The global batch is N classes x K images. Given the N classes chosen for a step (by the mining
service or at random), as ``bank_pos`` (positions among the usable classes,
``mining/class_ids.py``), rank r takes the contiguous block of N / W classes
``classes[r * N/W : (r + 1) * N/W]`` and, for each, K distinct samples drawn by a generator
seeded with (seed, step, class). Everything is a pure function of its arguments, so ranks need
no communication beyond agreeing on the class list, a resumed run sees the same batches, and
the rank shares are disjoint with the global batch as their union, in canonical rank order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def random_classes(seed: int, step: int, num_classes: int, n: int) -> list[int]:
    """N distinct classes (``bank_pos``) drawn uniformly for ``step`` (mining off, or its fallback)."""
    if n > num_classes:
        raise ValueError(f"batch.num_classes: N={n} is larger than the {num_classes} training classes")
    rng = np.random.default_rng([seed, step, 1])
    return [int(c) for c in rng.choice(num_classes, size=n, replace=False)]


def rank_share(
    seed: int,
    step: int,
    classes: Sequence[int],
    class_sizes: Sequence[int],
    images_per_class: int,
    world_size: int,
    rank: int,
) -> list[tuple[int, int]]:
    """This rank's (bank_pos, sample position) pairs: N/W classes x K samples, class-major.

    ``class_sizes`` holds each class's number of samples, by ``bank_pos``."""
    if len(classes) % world_size != 0:
        raise ValueError(f"batch.num_classes: {len(classes)} classes do not divide among {world_size} workers")
    if len(set(classes)) != len(classes):
        raise ValueError("sampler: the classes of a batch must be distinct")
    per_rank = len(classes) // world_size
    share: list[tuple[int, int]] = []
    for bank_pos in classes[rank * per_rank : (rank + 1) * per_rank]:
        size = class_sizes[bank_pos]
        rng = np.random.default_rng([seed, step, 2, bank_pos])
        replace = size < images_per_class
        for sample_pos in rng.choice(size, size=images_per_class, replace=replace):
            share.append((bank_pos, int(sample_pos)))
    return share
