"""The mining service: a Ray actor that owns the class bank and picks the next batch's classes.

Training publishes the class embeddings it computed anyway (``publish``, fire and forget) and
asks for the classes of a future step (``next_classes``). Ray runs an actor's calls in order,
so a request sent at the start of step t sees every publish up to step t - 1 and is computed
while step t trains. Until ``warmup_coverage`` of the classes have an embedding, the service
answers with random classes (a greedy pick among a few seen classes would only repeat them).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from dml_dist.config.schema import MiningConfig
from dml_dist.data.sampler import random_classes
from dml_dist.mining.bank import ClassBank
from dml_dist.mining.selection import select_hard_classes


class MiningService:
    """Plain class; ``start_mining_actor`` turns it into a named Ray actor."""

    def __init__(self, num_classes: int, dim: int, config: MiningConfig, seed: int):
        self.bank = ClassBank(num_classes, dim, config.momentum)
        self.config = config
        self.seed = seed
        self.latest_step = 0

    def publish(self, step: int, class_ids: np.ndarray, emb_CD: np.ndarray) -> None:
        self.bank.update(step, class_ids, emb_CD)
        self.latest_step = max(self.latest_step, step)

    def next_classes(self, step: int, n: int) -> dict[str, Any]:
        """Classes for ``step`` and how they were chosen (for metrics)."""
        started = time.perf_counter()
        mined = self.bank.coverage() >= self.config.warmup_coverage
        if mined:
            classes = select_hard_classes(
                self.bank.embeddings,
                n,
                seed=self.seed * 1_000_003 + step,
                eligible=self.bank.seen,
                random_share=self.config.random_share,
            ).tolist()
        else:
            classes = random_classes(self.seed, step, self.bank.embeddings.shape[0], n)
        age = self.bank.refresh_age(self.latest_step)
        return {
            "classes": classes,
            "mined": mined,
            "selection_seconds": time.perf_counter() - started,
            "refresh_age_max": age["max"],
            "refresh_age_mean": age["mean"],
            "coverage": self.bank.coverage(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"bank": self.bank.state_dict(), "latest_step": self.latest_step}


def mining_actor_name(job_name: str) -> str:
    return f"dml-dist-mining-{job_name}"


def start_mining_actor(job_name: str, num_classes: int, dim: int, config: MiningConfig, seed: int) -> Any:
    """Start the job's named mining actor (no CPU reserved: it must never starve the workers)."""
    import ray

    actor_cls = ray.remote(num_cpus=0, max_restarts=-1)(MiningService)
    return actor_cls.options(name=mining_actor_name(job_name)).remote(num_classes, dim, config, seed)
