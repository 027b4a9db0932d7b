"""What a class source tells the training side about one step: ``MiningAnswer``.

Built by the mining service (``MiningService.next_classes``), marked as a fallback by the client
when the service's classes are random or when no answer came in time (``mining/client.py``), by
``RandomClasses`` when mining is off, broadcast by rank 0 to every rank, and read by the loop
(the step's classes, the stale classes to refresh, and ``figures``: the ``MiningFigures`` of
its metrics row, which every sink reads). The service keeps its last answers in its state
file as plain dicts (``to_dict`` / ``from_dict``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dml_dist.observability.step_metrics import MiningFigures

DIAGNOSTICS = ("cluster_size", "epoch", "epoch_distinct_classes", "visit_gini", "cap_violation_share")
"""``MiningAnswer`` fields that describe how the batches are composed (``mining/diagnostics.py``)."""


@dataclass(frozen=True)
class MiningAnswer:
    """The classes of one step and how they were chosen; figures are None where no bank was read."""

    classes: list[int]
    """The step's N classes, as ``bank_pos`` (``mining/class_ids.py``), in global batch order."""
    mined: bool = False
    """Chosen through the bank by the rule (False: random classes)."""
    rule: str | None = None
    """``mining.rule`` of the service that answered (None: no service answered)."""
    hard_share: float | None = None
    """Share of the classes the rule mined (0 when random)."""
    reason: str | None = None
    """Why the service answered random classes: ``warmup``, ``graph_pending`` or ``rule``;
    ``out_of_order`` when rule ``partition`` was asked for a step older than its last one.
    (``partition`` answers ``warmup`` while s = 1: its classes are then a random permutation
    epoch, not independent random classes.)"""
    selection_seconds: float | None = None
    refresh_age_max: float | None = None
    refresh_age_mean: float | None = None
    """Steps since the bank's classes were refreshed (max and mean over the seen classes)."""
    staleness_at_selection_mean: float | None = None
    staleness_at_selection_max: float | None = None
    """Steps since the classes the rule relied on (neighbours, greedy picks) were refreshed."""
    negative_similarity: float | None = None
    """Mean similarity (by the bank) of each chosen class to its closest chosen class."""
    graph_step: int | None = None
    """Snapshot step of the kNN graph the search ran on (None: exact search, or none)."""
    cluster_size: int | None = None
    """``partition``: s, the classes per cluster of this batch (1 = plain permutation epoch)."""
    epoch: int | None = None
    """``partition``: the epoch this batch belongs to (0-based)."""
    epoch_distinct_classes: int | None = None
    visit_gini: float | None = None
    cap_violation_share: float | None = None
    """Window figures up to this batch (``mining/diagnostics.py``): distinct classes, Gini of the
    class visit counts, share of mined pairs above ``similarity_cap`` (None while it is off)."""
    stale_classes: list[int] = field(default_factory=list)
    """Every ``refresh_every`` steps: ``bank_pos`` of classes for the training side to re-embed."""
    fallback_reason: str | None = None
    """Set by the client when the step used random classes while mining: ``timeout``,
    ``unavailable``, or the service's ``reason`` (``warmup``, ``graph_pending``)."""

    def diagnostics(self) -> dict[str, float]:
        """The batch-composition figures that are set (``partition``'s, the window's), by name:
        the keys that ``metrics.jsonl`` adds to a step's row."""
        values = {name: getattr(self, name) for name in DIAGNOSTICS}
        return {name: value for name, value in values.items() if value is not None}

    def figures(self) -> MiningFigures:
        """The figures of the step's metrics row (``observability/step_metrics.py``)."""
        return MiningFigures(
            mined=self.mined,
            fallback=self.fallback,
            rule=self.rule,
            hard_share=self.hard_share,
            selection_seconds=self.selection_seconds,
            refresh_age_max=self.refresh_age_max,
            refresh_age_mean=self.refresh_age_mean,
            staleness_at_selection_mean=self.staleness_at_selection_mean,
            staleness_at_selection_max=self.staleness_at_selection_max,
            negative_similarity=self.negative_similarity,
            diagnostics=self.diagnostics(),
        )

    @property
    def fallback(self) -> bool:
        """The step used random classes although mining is on (counted as a fallback)."""
        return self.fallback_reason is not None

    def as_fallback(self, reason: str) -> MiningAnswer:
        return dataclasses.replace(self, fallback_reason=reason)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MiningAnswer:
        """Inverse of ``to_dict``; keys of other versions are ignored, missing ones take defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
