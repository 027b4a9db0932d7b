"""The class-driven sampler: which (class, sample) pairs each rank trains on at a step.

The global batch is N classes x K images. Given the N class positions chosen for a step (by
the mining service or at random), rank r takes the contiguous block of N / W classes
``classes[r * N/W : (r + 1) * N/W]`` and, for each, K distinct samples drawn by a generator
seeded with (seed, step, class). Everything is a pure function of its arguments, so ranks need
no communication beyond agreeing on the class list, a resumed run sees the same batches, and
the rank shares are disjoint with the global batch as their union, in canonical rank order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def random_classes(seed: int, step: int, num_classes: int, n: int) -> list[int]:
    """N distinct class positions drawn uniformly for ``step`` (the fallback when not mining)."""
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
    """This rank's (class position, sample position) pairs: N/W classes x K samples, class-major."""
    if len(classes) % world_size != 0:
        raise ValueError(f"batch.num_classes: {len(classes)} classes do not divide among {world_size} workers")
    if len(set(classes)) != len(classes):
        raise ValueError("sampler: the classes of a batch must be distinct")
    per_rank = len(classes) // world_size
    share: list[tuple[int, int]] = []
    for class_pos in classes[rank * per_rank : (rank + 1) * per_rank]:
        size = class_sizes[class_pos]
        rng = np.random.default_rng([seed, step, 2, class_pos])
        replace = size < images_per_class
        for sample_pos in rng.choice(size, size=images_per_class, replace=replace):
            share.append((class_pos, int(sample_pos)))
    return share
