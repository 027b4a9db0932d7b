"""Run one real optimizer step (``dml_dist.train.step``) on W gloo ranks through DeepSpeed,
and the same step on one process, so tests can compare gradients and losses."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.multiprocessing as mp

from dml_dist.config import EngineConfig, ModelConfig
from dml_dist.data.images import decode_batch
from dml_dist.data.sampler import random_classes, rank_share
from dml_dist.data.shard_index import IndexedShards
from dml_dist.distributed import collectives
from dml_dist.losses import build_loss
from dml_dist.models.embedder import build_model
from dml_dist.train.engine import build_engine
from dml_dist.train.step import optimizer_step

LR = 1.0


@dataclass
class StepSpec:
    """One step to run: the batch, the loss, the engine and the chunking."""

    num_classes: int = 12
    loss_name: str = "npair_mc"
    loss_params: dict = field(default_factory=lambda: {"l2_reg": 0.002, "temperature": 0.1})
    zero_stage: int = 0
    chunk_size: int = 0
    model: ModelConfig = field(default_factory=lambda: ModelConfig(channels=[8, 16], embedding_dim=16))
    shards: str | None = None  # read the batch from real shards through the sampler instead
    image_size: int = 16
    channels: int = 1


def global_batch(spec: StepSpec, world_size: int = 1, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's images and labels of the global batch (class-major, 2 images per class)."""
    if spec.shards is not None:
        shards = IndexedShards(spec.shards)
        classes = random_classes(0, 0, shards.num_classes, spec.num_classes)
        share = rank_share(0, 0, classes, shards.class_sizes(), 2, world_size, rank)
        images = decode_batch([shards.read(c, s) for c, s in share], spec.image_size)
        return images, torch.tensor([shards.labels[c] for c, _ in share])
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(spec.num_classes * 2, spec.channels, spec.image_size, spec.image_size, generator=gen)
    labels = torch.arange(spec.num_classes).repeat_interleave(2) * 7 + 3
    per_rank = images.shape[0] // world_size
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    return images[rows], labels[rows]


def single_process_gradients(spec: StepSpec) -> tuple[dict[str, torch.Tensor], float]:
    """Plain autograd on the whole batch in this process: (parameter gradients, loss)."""
    torch.manual_seed(0)
    model = build_model(spec.model)
    images, labels = global_batch(spec)
    loss = build_loss(spec.loss_name, **spec.loss_params)(model(images), labels)
    loss.backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}, loss.item()


def _rank_main(rank: int, world_size: int, port: int, spec: StepSpec, out: str) -> None:
    collectives.init_local_gloo(rank, world_size, port)
    torch.manual_seed(0)
    model = build_model(spec.model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    images, labels = global_batch(spec, world_size, rank)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    engine_config = EngineConfig(zero_stage=spec.zero_stage, precision="fp32")
    engine = build_engine(model, engine_config, images.shape[0], False, rank, optimizer)
    loss_fn = build_loss(spec.loss_name, **spec.loss_params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = optimizer_step(engine, loss_fn, images, labels, spec.chunk_size)
    if rank == 0:
        after = dict(engine.module.named_parameters())
        grads = {name: (before[name] - after[name].detach()) / LR for name in before}
        collective_warnings = [str(w.message) for w in caught if "torch.distributed.nn" in str(w.message)]
        torch.save({"grads": grads, "loss": result.loss, "warnings": collective_warnings}, out)
    collectives.shutdown()


def distributed_gradients(world_size: int, spec: StepSpec, tmp: Path) -> tuple[dict[str, torch.Tensor], float]:
    """(gradients read off one SGD step with lr = 1, global loss) on ``world_size`` gloo ranks."""
    saved = distributed_step(world_size, spec, tmp)
    return saved["grads"], float(saved["loss"])


def distributed_step(world_size: int, spec: StepSpec, tmp: Path) -> dict:
    """Rank 0's record of one SGD step on ``world_size`` gloo ranks: ``grads``, ``loss``, and
    ``warnings`` (the messages of warnings about ``torch.distributed.nn`` raised during the step)."""
    out = tmp / f"step-w{world_size}.pt"
    mp.spawn(_rank_main, args=(world_size, collectives.free_local_port(), spec, str(out)), nprocs=world_size, join=True)
    return torch.load(out, weights_only=True)


def _every_loss_rank_main(rank: int, world_size: int, port: int, out: str) -> None:
    """Two real optimizer steps of every registered loss through DeepSpeed on this rank."""
    from dml_dist.losses import LOSSES
    from dml_dist.models.embedder import EmbedderWithLoss

    collectives.init_local_gloo(rank, world_size, port)
    spec = StepSpec(num_classes=8)
    images, labels = global_batch(spec, world_size, rank)
    # Four images per class (two copies of each pair, jittered) so every loss has positives and negatives.
    images = torch.cat([images, images + 0.05 * torch.randn_like(images)])
    labels = torch.cat([labels, labels])
    report = {}
    for name in sorted(LOSSES):
        torch.manual_seed(0)
        module = EmbedderWithLoss(build_model(spec.model), build_loss(name))
        before = [p.detach().clone() for p in module.parameters()]
        engine = build_engine(module, EngineConfig(zero_stage=1, lr=1e-2), images.shape[0], False, rank)
        losses = [optimizer_step(engine, engine.module.loss, images, labels).loss for _ in range(2)]
        moved = [not torch.equal(b, a.detach()) for b, a in zip(before, engine.module.parameters(), strict=True)]
        report[name] = {"losses": losses, "all_parameters_moved": all(moved)}
    if rank == 0:
        torch.save(report, out)
    collectives.shutdown()


def every_loss_two_steps(world_size: int, tmp: Path) -> dict:
    out = tmp / "every-loss.pt"
    mp.spawn(
        _every_loss_rank_main, args=(world_size, collectives.free_local_port(), str(out)), nprocs=world_size, join=True
    )
    return torch.load(out, weights_only=True)
