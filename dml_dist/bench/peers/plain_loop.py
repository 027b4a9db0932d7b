"""The plain-loop rows of ``bench peers``: a model trained in one process on dml-dist's batches,
then evaluated by dml-dist's own held-out evaluation (every row the same code)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dml_dist.bench.peers.models import PeerLoss, build_backbone
from dml_dist.config.loader import replaced
from dml_dist.config.schema import ExperimentConfig
from dml_dist.eval.retrieval import RetrievalReport


@dataclass
class RowResult:
    """One row's figures for one seed: training samples/s and the held-out metrics."""

    samples_per_second: float
    report: RetrievalReport


def steady_samples_per_second(samples: list[int], seconds: list[float]) -> float:
    """Samples / second over the steps after the first (all of them for a one-step run)."""
    skip = 1 if len(samples) > 1 else 0
    return float(sum(samples[skip:]) / max(sum(seconds[skip:]), 1e-9))


def train_plain(
    config: ExperimentConfig,
    train_shards: Path,
    model: nn.Module,
    loss_fn: nn.Module,
    miner: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    threads: int,
    evaluate_at: dict[int, Callable[[], None]] | None = None,
) -> float:
    """Train ``model`` in a plain loop for ``train.steps`` steps on dml-dist's batches; returns samples/s.

    ``evaluate_at`` maps a step count (at most ``train.steps``) to a callback run after that many
    steps; its time is not counted in samples/s.
    """
    from dml_dist.data.decode_spec import DecodeSpec
    from dml_dist.data.indexed_loader import ClassBatchLoader
    from dml_dist.data.sampler import random_classes
    from dml_dist.data.shard_index import IndexedShards

    seed, n, k = config.train.seed, config.batch.num_classes, config.batch.images_per_class
    loader = ClassBatchLoader(
        IndexedShards(train_shards),
        DecodeSpec.from_config(config.data),
        seed=seed,
        images_per_class=k,
        world_size=1,
        rank=0,
        min_images_policy=config.data.min_images_policy,
    )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    samples: list[int] = []
    seconds: list[float] = []
    evaluate_at = evaluate_at or {}
    model.train()
    try:
        for step in range(config.train.steps):
            started = time.perf_counter()
            images, labels = loader.load(step, random_classes(seed, step, loader.num_classes, n))
            emb_BD = model(images)
            loss = loss_fn(emb_BD, labels, miner(emb_BD, labels)) if miner is not None else loss_fn(emb_BD, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seconds.append(time.perf_counter() - started)
            samples.append(int(images.shape[0]))
            if not math.isfinite(float(loss.detach())):
                raise ValueError(f"bench peers: the loss is not finite at step {step + 1}")
            if step + 1 in evaluate_at:
                model.eval()
                evaluate_at[step + 1]()
                model.train()
    finally:
        torch.set_num_threads(previous_threads)
        loader.close()
    return steady_samples_per_second(samples, seconds)


def evaluate(model: nn.Module, config: ExperimentConfig, eval_shards: Path) -> RetrievalReport:
    """Held-out retrieval with dml-dist's own evaluation (every row the same code)."""
    from dml_dist.eval.heldout import evaluate_shards

    held = evaluate_shards(model, eval_shards, config.data, config.eval, torch.device("cpu"), config.train.seed)
    return held.report


def run_peer_row(
    config: ExperimentConfig,
    paths: tuple[Path, Path],
    loss: PeerLoss,
    backbone: str,
    lr: float,
    threads: int,
    budgets: list[int],
) -> dict[int, RowResult]:
    """A PML loss (and miner) on ``backbone`` with Adam at ``lr``, trained once to the largest
    budget and evaluated after each budget's steps: {budget: result} (one samples/s for all)."""
    torch.manual_seed(config.train.seed)
    model = build_backbone(config, backbone)
    loss_fn, miner = loss.build()
    optimizer = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=lr)
    reports: dict[int, RetrievalReport] = {}

    def evaluate_after(budget: int) -> Callable[[], None]:
        return lambda: reports.__setitem__(budget, evaluate(model, config, paths[1]))

    peer = replaced(config, {"train.steps": max(budgets)})
    rate = train_plain(
        peer, paths[0], model, loss_fn, miner, optimizer, threads, {b: evaluate_after(b) for b in budgets}
    )
    return {budget: RowResult(rate, reports[budget]) for budget in budgets}


def run_plain_dml_loss_row(config: ExperimentConfig, paths: tuple[Path, Path], threads: int) -> RowResult:
    """The config's loss and backbone with its optimizer settings: dml-dist's step without the system."""
    from dml_dist.losses import build_loss

    torch.manual_seed(config.train.seed)
    model = build_backbone(config, "config")
    loss_fn = build_loss(config.loss.name, **config.loss.params)
    engine = config.engine
    optimizer = torch.optim.AdamW(
        [*model.parameters(), *loss_fn.parameters()],
        lr=engine.scaled_lr(config.batch.num_classes),
        weight_decay=engine.weight_decay,
    )
    rate = train_plain(config, paths[0], model, loss_fn, None, optimizer, threads)
    return RowResult(rate, evaluate(model, config, paths[1]))
