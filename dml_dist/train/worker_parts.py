"""A training worker's parts, each built from the plan in one place: ``build_parts(plan)``.

``Trainer(plan, parts)`` (``train/loop.py``) builds nothing itself: it is handed the device and
dtype, the loader, the DeepSpeed engine (with the embedder and the loss inside), the cross-batch
memory, rank 0's class source (the mining service's client, or random classes), the metrics
sink, where rank 0 writes the run's files, how to learn the checkpoint Ray Train hands back, and
the node's id. From them it makes the run's ``TrainState``, its ``Checkpointer`` and the held-out
evaluator, and restores the newest checkpoint.

A bench or a test builds the parts and replaces the ones it brings before the trainer is made
(``dataclasses.replace``): the study harness (``bench/mining_study.py``) brings a class source
over an in-process mining service, and runs without a Ray Train session (``in_ray_train=False``:
no checkpoint is handed back, and the node is ``"local"``, since asking Ray would start a cluster).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dml_dist.config.loader import replaced
from dml_dist.data.indexed_loader import ClassBatchLoader
from dml_dist.data.loader import build_loader
from dml_dist.data.stream_loader import StreamingClassLoader
from dml_dist.distributed import collectives
from dml_dist.losses.memory import Memory, build_memory
from dml_dist.mining.client import ClassSource, MiningClient, RandomClasses
from dml_dist.observability.metrics import NullMetrics, RayMetrics
from dml_dist.train import node_copies
from dml_dist.train.engine import build_engine, engine_dtype
from dml_dist.train.model_sources import build_trained
from dml_dist.train.worker_plan import WorkerPlan


@dataclass
class WorkerParts:
    """What a ``Trainer`` is handed (see the module docstring)."""

    device: torch.device
    dtype: torch.dtype
    loader: ClassBatchLoader | StreamingClassLoader
    engine: Any
    """The DeepSpeed engine; ``engine.module.embedder`` and ``engine.module.loss``."""
    memory: Memory
    classes: ClassSource
    metrics: NullMetrics
    run_dir: Path
    """Where rank 0 writes the run's files: the run directory, or ``mirror.local``."""
    mirror: node_copies.RunMirror | None
    """Rank 0 on a URI storage: the node-local mirror that every report uploads."""
    reported_checkpoint: Callable[[], Any]
    """The checkpoint Ray Train hands this worker after a restart (None: none)."""
    node_id: str


def build_parts(plan: WorkerPlan, in_ray_train: bool = True) -> WorkerParts:
    """Every part of this rank's worker, from the plan's config (see the module docstring)."""
    config = plan.config
    rank, world_size = collectives.rank(), collectives.world_size()
    # A URI run directory: rank 0 (the only rank writing run files) writes into a node-local
    # mirror that reports upload; the other ranks never write there.
    mirror = node_copies.RunMirror.of(plan.run_dir, fresh=True) if rank == 0 else None
    use_gpu = config.train.use_gpu and torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")
    if not use_gpu:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(config.train.seed)  # the first weights (model_sources.py) follow the seed
    loader = build_loader(
        config.data,
        plan.train_shards,
        seed=config.train.seed,
        images_per_class=config.batch.images_per_class,
        world_size=world_size,
        rank=rank,
        num_classes=config.batch.num_classes,
    )
    local_batch = config.batch.num_classes // world_size * config.batch.images_per_class
    engine_config = replaced(config.engine, {"lr": config.engine.scaled_lr(config.batch.num_classes)})
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    trained = build_trained(config, use_gpu)  # embedder with its first weights, and loss
    engine = build_engine(trained, engine_config, local_batch, use_gpu, local_rank, total_steps=config.train.steps)
    return WorkerParts(
        device=device,
        dtype=engine_dtype(config.engine, use_gpu),
        loader=loader,
        engine=engine,
        # Outside the engine's module, the same on every rank (losses/memory.py).
        memory=build_memory(config.memory, config.model.embedding_dim, device),
        classes=class_source(plan, rank, loader.num_classes),
        metrics=RayMetrics(plan.job_name, rank) if config.metrics.enabled else NullMetrics(),
        run_dir=mirror.local if mirror is not None else Path(plan.run_dir),
        mirror=mirror,
        reported_checkpoint=_ray_train_checkpoint if in_ray_train else _no_checkpoint,
        node_id=_ray_node_id() if in_ray_train else "local",
    )


def class_source(plan: WorkerPlan, rank: int, num_classes: int) -> ClassSource:
    """Rank 0's client of the plan's mining actor, else random classes (a pure function of seed and step)."""
    config = plan.config
    args = (config.train.seed, num_classes, config.batch.num_classes)
    if rank == 0 and plan.mining_actor is not None:
        return MiningClient(plan.mining_actor, config.mining.timeout_s, *args)
    return RandomClasses(*args)


def _ray_train_checkpoint() -> Any:
    import ray.train

    return ray.train.get_checkpoint()


def _no_checkpoint() -> None:
    return None


def _ray_node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())
