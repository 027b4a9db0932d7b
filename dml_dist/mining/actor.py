"""The job's mining service as a named Ray actor, restarted by Ray when it dies.

The actor is ``MiningService`` (``mining/service.py``) under the name ``dml-dist-mining-JOB``,
so tests and tools can find it. Ray restarts a dead actor with the same constructor arguments,
and the constructor restores the state file at ``checkpoint_path`` (``BANK_FILE`` in the run
directory). No CPU is reserved for it: it must never starve the training workers.
"""

from __future__ import annotations

from typing import Any

from dml_dist.config.schema import MiningConfig
from dml_dist.mining.service import MiningService

BANK_FILE = "mining_bank.npz"


def mining_actor_name(job_name: str) -> str:
    return f"dml-dist-mining-{job_name}"


def start_mining_actor(
    job_name: str,
    num_classes: int,
    dim: int,
    config: MiningConfig,
    seed: int,
    checkpoint_path: str | None = None,
) -> Any:
    """Start the job's named mining actor (see the module docstring); returns its handle."""
    import ray

    actor_cls = ray.remote(num_cpus=0, max_restarts=-1)(MiningService)
    return actor_cls.options(name=mining_actor_name(job_name)).remote(num_classes, dim, config, seed, checkpoint_path)
