"""Helpers that run one training step on W gloo processes and on one process, for parity tests."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dml_dist.config.schema import EngineConfig, ModelConfig
from dml_dist.dist import collectives
from dml_dist.losses import build_loss
from dml_dist.models import build_model
from dml_dist.train.engine import build_engine

MODEL = ModelConfig(channels=[8, 16], embedding_dim=16)
LR = 1.0


def global_batch(num_classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N*2, 1, 16, 16] and labels, class-major with 2 images per class."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(num_classes * 2, 1, 16, 16, generator=gen)
    labels = torch.arange(num_classes).repeat_interleave(2) * 7 + 3
    return images, labels


def single_process_gradients(num_classes: int, loss_name: str, loss_params: dict) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(MODEL)
    images, labels = global_batch(num_classes)
    build_loss(loss_name, **loss_params)(model(images), labels).backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_main(
    rank: int,
    world_size: int,
    port: int,
    num_classes: int,
    loss_name: str,
    loss_params: dict,
    zero_stage: int,
    out: str,
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = build_model(MODEL)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    images, labels = global_batch(num_classes)
    per_rank = images.shape[0] // world_size
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    engine = build_engine(
        model, EngineConfig(zero_stage=zero_stage, precision="fp32"), per_rank, False, rank, optimizer
    )
    emb = engine(images[rows])
    ref = collectives.gather_with_grad(emb)
    ref_labels = collectives.gather_no_grad(labels[rows])
    share = build_loss(loss_name, **loss_params)(emb, labels[rows], ref, ref_labels, ref_start=rank * per_rank)
    engine.backward(collectives.scale_for_gradient_averaging(share))
    engine.step()
    if rank == 0:
        after = dict(engine.module.named_parameters())
        grads = {name: (before[name] - after[name].detach()) / LR for name in before}
        torch.save(grads, out)
    dist.barrier()
    dist.destroy_process_group()


def distributed_gradients(
    world_size: int, num_classes: int, loss_name: str, loss_params: dict, zero_stage: int, tmp: Path
) -> dict[str, torch.Tensor]:
    """Gradients read off one SGD step (lr = 1) of a DeepSpeed engine on ``world_size`` gloo ranks."""
    out = tmp / f"grads-w{world_size}-z{zero_stage}.pt"
    mp.spawn(
        _rank_main,
        args=(world_size, _free_port(), num_classes, loss_name, loss_params, zero_stage, str(out)),
        nprocs=world_size,
        join=True,
    )
    return torch.load(out, weights_only=True)
