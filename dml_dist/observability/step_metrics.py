"""The figures of one training step: ``StepMetrics``, built by the loop, read by every sink.

The loop (``train/loop.py``) builds one per step on every rank. Rank 0 writes it to
``metrics.jsonl`` at log steps (``to_json``: one JSON object, keys in the order below, phase
seconds and cross-batch memory figures flattened in); ``ray.train.report`` gets a few of its
figures (``train/reporting.py``); the Prometheus sink observes it every step
(``observability/metrics.py``): one typed row feeds all three. The mining figures are one
``MiningFigures``, built from the step's ``MiningAnswer`` by ``MiningAnswer.figures``
(``mining/answer.py``), so the sinks need not know the answer's type; ``violation_rate`` (of the trained batch) and ``probe_violation_rate``
(of a fixed random batch, ``train/probe.py``) are computed on rank 0 at log steps only (None
elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MiningFigures:
    """How the step's classes were chosen (``mining.answer.MiningAnswer``'s figures; None where no
    service answered or no bank was read)."""

    mined: bool = False
    """Chosen through the class bank by the rule (False: random classes)."""
    fallback: bool = False
    """Random classes although mining is on (service slow, dead, or not warm yet)."""
    rule: str | None = None
    hard_share: float | None = None
    selection_seconds: float | None = None
    refresh_age_max: float | None = None
    refresh_age_mean: float | None = None
    staleness_at_selection_mean: float | None = None
    staleness_at_selection_max: float | None = None
    negative_similarity: float | None = None
    diagnostics: dict[str, float] = field(default_factory=dict)
    """How the batches are composed (cluster size, epoch, distinct classes, visit Gini, pairs
    above the similarity cap); empty when no service answered."""


@dataclass
class StepMetrics:
    step: int
    """Steps done (the step's index + 1)."""
    loss: float
    """Global loss of the step."""
    samples_per_second: float
    """Global samples per second of the step (every worker's together)."""
    global_batch: int
    """Samples of the global batch (N x K)."""
    local_samples: int
    """Samples this rank trained on (for the samples counter; not in ``metrics.jsonl``)."""
    skipped: bool
    """The loss or a gradient was not finite: no parameter changed."""
    skipped_steps: int
    step_seconds: float
    data_seconds: float
    phase_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds in forward, all_gather, loss, backward, optimizer (``train/step.py``)."""
    mining: MiningFigures = field(default_factory=MiningFigures)
    fallbacks: int = 0
    """Steps so far (in this process) that used random classes although mining is on."""
    mining_skipped_saves: int = 0
    """Checkpoints so far (in this process) that went on without the mining service's state."""
    data_skipped_samples: int = 0
    """Samples the loader skipped as bad data since the previous step (not in ``metrics.jsonl``)."""
    violation_rate: float | None = None
    probe_violation_rate: float | None = None
    """The violation rate of the fixed random probe batch (``train/probe.py``): the baseline of ``violation_rate``."""
    memory: dict[str, float] = field(default_factory=dict)
    """Cross-batch memory figures (``memory_fill``, ...); empty when the memory is off."""
    lr: float | None = None
    """Learning rate the step used (after scaling and the schedule)."""
    workers: int = 1
    """Ray Train workers sharing the global batch."""

    @property
    def samples_per_second_per_worker(self) -> float:
        """The step's global rate over the workers (what one GPU or CPU slot does)."""
        return self.samples_per_second / self.workers

    def to_json(self) -> dict[str, Any]:
        """The ``metrics.jsonl`` row."""
        return {
            "step": self.step,
            "loss": self.loss,
            "samples_per_second": self.samples_per_second,
            "samples_per_second_per_worker": self.samples_per_second_per_worker,
            "lr": self.lr,
            "global_batch": self.global_batch,
            "skipped": self.skipped,
            "skipped_steps": self.skipped_steps,
            "step_seconds": self.step_seconds,
            "data_seconds": self.data_seconds,
            **{f"{name}_seconds": value for name, value in self.phase_seconds.items()},
            "mined": self.mining.mined,
            "fallbacks": self.fallbacks,
            "mining_skipped_saves": self.mining_skipped_saves,
            "refresh_age_max": self.mining.refresh_age_max,
            "negative_similarity": self.mining.negative_similarity,
            "violation_rate": self.violation_rate,
            "probe_violation_rate": self.probe_violation_rate,
            "staleness_at_selection_mean": self.mining.staleness_at_selection_mean,
            "hard_share": self.mining.hard_share,
            **self.mining.diagnostics,
            **self.memory,
        }
