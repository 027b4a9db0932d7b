"""A fixed random probe batch: the model's violation rate on random classes, at every log step.

The trained batch's violation rate (``mining/hardness.py::violation_rate``) rises when the
mining service picks harder classes and falls as the model learns; alone it cannot tell the
two apart. The probe is N random classes x K images drawn once from the seed (the same images
at every log step and in every arm of a study with that seed), embedded without gradient. Its
violation rate is the baseline that a mined batch's is read against: a rule that mines hard
classes shows a trained-batch rate above the probe's at the same step; random classes show both
alike (issue 28, item 4).

Every rank embeds an equal share of the probe and the shares are gathered
(``train/refresh.py::embed_across_ranks``, shared with the refresh pass).
Cost: one forward pass of N x K images per log step, without backward.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dml_dist.config.schema import ExperimentConfig
from dml_dist.distributed import collectives
from dml_dist.mining.hardness import violation_rate
from dml_dist.train.refresh import IndexedClasses, embed_across_ranks

PROBE_STREAM = 7
"""Seeds the probe's draw apart from every other stream of the run (``refresh_samples`` uses 3)."""


def probe_pairs(
    seed: int, class_sizes: Sequence[int], num_classes: int, images_per_class: int
) -> list[tuple[int, int]]:
    """(bank_pos, sample) pairs of the probe: ``num_classes`` distinct random classes, then up to
    ``images_per_class`` distinct samples of each, a pure function of the seed."""
    rng = np.random.default_rng([seed, PROBE_STREAM])
    classes = rng.choice(len(class_sizes), size=min(num_classes, len(class_sizes)), replace=False)
    pairs = []
    for bank_pos in sorted(int(c) for c in classes):
        size = class_sizes[bank_pos]
        for sample_pos in sorted(rng.choice(size, size=min(size, images_per_class), replace=False)):
            pairs.append((bank_pos, int(sample_pos)))
    return pairs


def probe_violation_rate(
    model: torch.nn.Module,
    loader: IndexedClasses,
    pairs: Sequence[tuple[int, int]],
    config: ExperimentConfig,
    device: torch.device,
    dtype: torch.dtype,
) -> float | None:
    """The probe's violation rate on rank 0 (NaN when no anchor has a positive and a negative),
    None on the other ranks. Every rank must call it at the same step with the same ``pairs``."""
    labels_M, emb_MD = embed_across_ranks(model, loader, pairs, config, device, dtype)
    return violation_rate(emb_MD, labels_M) if collectives.rank() == 0 else None
