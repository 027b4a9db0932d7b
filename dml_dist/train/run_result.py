"""What a training run returns to its caller, typed: ``RunResult`` (``train/launcher.py::run_training``).

The workers' last ``ray.train.report`` carries the run's summary as plain metrics (Ray keeps them
as a dict): the last held-out evaluation's fields, where the run's files are, where the ranks
ran, and, when the run ended early on purpose, why (``train/errors.py``). ``RunResult.from_report``
reads that dict once, so callers read fields instead of keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dml_dist.eval.result import EvalResult
from dml_dist.train.errors import STOPPED


@dataclass(frozen=True)
class RunResult:
    """A finished (or deliberately stopped) run, as the driver saw it."""

    run_dir: str
    """Where the run's files are: a directory, or a URI of a remote storage."""
    step: int
    """The last step the workers reported."""
    evaluation: EvalResult | None
    """The last held-out evaluation (without its history: ``eval.json`` has it); None without one."""
    samples_per_second: float | None
    """Training throughput over the whole run (all workers), from the last report."""
    train_seconds: float
    """Wall-clock time of ``TorchTrainer.fit`` on the driver."""
    curves: str | None = None
    """The training curves' image (``curves.png``) once the run finished."""
    placement: list[dict[str, Any]] = field(default_factory=list)
    """Where each rank ran: ``{"rank", "node_id", "host", "pid"}``."""
    mining: dict[str, Any] | None = None
    """The mining service's final statistics (``mining.json``); None without mining."""
    stop_reason: str | None = None
    """Why the workers ended the run early (a diverging loss); None when it ran all its steps."""

    @classmethod
    def from_report(
        cls, metrics: dict[str, Any], run_dir: str, train_seconds: float, mining: dict[str, Any] | None
    ) -> RunResult:
        """From the last report's metrics (``train/reporting.py::ray_metrics``)."""
        evaluation = EvalResult.from_json(metrics) if "recall" in metrics and "untrained_recall" in metrics else None
        throughput = metrics.get("mean_samples_per_second")
        return cls(
            run_dir=str(metrics.get("run_dir") or run_dir),
            step=int(metrics.get("step", 0)),
            evaluation=evaluation,
            samples_per_second=float(throughput) if throughput is not None else None,
            train_seconds=train_seconds,
            curves=metrics.get("curves"),
            placement=list(metrics.get("placement") or []),
            mining=mining or None,
            stop_reason=str(metrics[STOPPED]) if metrics.get(STOPPED) else None,
        )
