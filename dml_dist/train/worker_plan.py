"""What the driver hands every Ray Train worker: plain data, plus the mining actor's handle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dml_dist.config import ExperimentConfig


@dataclass
class WorkerPlan:
    """What the driver hands every worker (plain data plus the mining actor handle)."""

    config: ExperimentConfig
    train_shards: str
    eval_shards: str
    run_dir: str
    job_name: str
    mining_actor: Any = None
    resume: bool = False
