"""Rule ``partition`` as the service runs it: the epoch's next batch for a step
(``mining/partition.py``) and the diagnostics window each answer reports
(``mining/diagnostics.py``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from dml_dist.config import MiningConfig
from dml_dist.mining.bank import ClassBank
from dml_dist.mining.diagnostics import DiagnosticsWindow
from dml_dist.mining.partition import PartitionDraw, PartitionSampler, cluster_size


def partition_draw(
    sampler: PartitionSampler,
    config: MiningConfig,
    step: int,
    n: int,
    centres_CD: np.ndarray,
    trusted_C: np.ndarray,
    warm: bool,
) -> tuple[PartitionDraw | None, str | None]:
    """The epoch's next batch of N classes for ``step``, and why it is not mined (s = 1: ``warmup``).

    A step older than the last one dealt (not among the kept answers) gets random classes
    (``out_of_order``): dealing it would take a batch away from a later step.
    """
    if step <= sampler.last_step:
        return None, "out_of_order"
    size = cluster_size(
        step, n, config.warmup_steps, config.partition_double_every_steps, config.partition_max_cluster_size, warm
    )
    draw = sampler.next_batch(
        step, n, centres_CD, trusted_C, size, config.similarity_cap, config.partition_recluster_steps
    )
    return draw, None if draw.clustered.any() else "warmup"


def observe_window(
    window: DiagnosticsWindow,
    bank: ClassBank,
    cap: float,
    chosen: np.ndarray,
    mined: bool,
    n: int,
    draw: PartitionDraw | None,
) -> dict[str, Any]:
    """Add the batch to the diagnostics window (a partition epoch; else ceil(C / N) batches) and
    return the window's figures."""
    epoch_batches = -(-bank.num_classes // n)
    if (draw is not None and draw.new_epoch) or (draw is None and window.batches >= epoch_batches):
        window.reset()
    window.add(chosen, mined, bank.embeddings, bank.seen, cap)
    return window.figures(cap)
