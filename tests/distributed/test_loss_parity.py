"""Every registered loss on W = 2, 3, 4 gloo ranks through the real autograd gather equals the
single-process loss on the concatenated batch, value and gradients (embedding-model parameters
and the loss's own parameters, e.g. the margin loss's beta).

One process group per W checks all losses, to keep the runtime low. Each rank embeds its rows
with a linear map, gathers with ``gather_with_grad``, backpropagates
``scale_for_gradient_averaging(share)`` and averages gradients over ranks by hand, as the engine
would.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dml_dist.distributed import collectives
from dml_dist.distributed.collectives import free_local_port
from dml_dist.losses import LOSSES, build_loss

NUM_ROWS, IN_DIM, DIM = 24, 10, 6
PARAMS = {"dro_topk": {"k": 60}, "dro_topk_pn": {"k_pos": 10, "k_neg": 40}}


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(8).repeat_interleave(3)[torch.randperm(NUM_ROWS, generator=gen)]
    inputs = torch.randn(NUM_ROWS, IN_DIM, generator=gen, dtype=torch.float64)
    weight = torch.randn(IN_DIM, DIM, generator=gen, dtype=torch.float64)
    return inputs, labels, weight


def _grads(name: str, inputs: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, rank: int, world: int):  # type: ignore[no-untyped-def]
    """(loss value, [weight grad, loss-parameter grads...]) of this process's part."""
    w = weight.clone().requires_grad_(True)
    loss_fn = build_loss(name, **PARAMS.get(name, {})).double()
    rows = NUM_ROWS // world
    emb = inputs[rank * rows : (rank + 1) * rows] @ w
    local_labels = labels[rank * rows : (rank + 1) * rows]
    if world == 1:  # the single-process reference: plain autograd, no collectives
        share = loss_fn(emb, local_labels)
        share.backward()
        return share.detach(), [w.grad] + [
            p.grad if p.grad is not None else torch.zeros_like(p) for p in loss_fn.parameters()
        ]
    ref, ref_labels = collectives.gather_with_grad(emb), collectives.gather_no_grad(local_labels)
    share = loss_fn(emb, local_labels, ref, ref_labels, ref_start=rank * rows)
    collectives.scale_for_gradient_averaging(share).backward()
    grads = [w.grad] + [p.grad if p.grad is not None else torch.zeros_like(p) for p in loss_fn.parameters()]
    for g in grads:
        dist.all_reduce(g)
        g /= world
    return collectives.all_reduce_sum(share), grads


def _rank_main(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        inputs, labels, weight = _data()
        for name in LOSSES:
            value, grads = _grads(name, inputs, labels, weight, rank, world)
            single_value, single_grads = _grads(name, inputs, labels, weight, 0, 1)
            torch.testing.assert_close(value, single_value.detach(), msg=f"{name} W={world}: loss")
            for g, s in zip(grads, single_grads, strict=True):
                torch.testing.assert_close(g, s, msg=f"{name} W={world}: gradient")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3, 4])
def test_all_gathered_losses_equal_the_single_process_loss(world: int) -> None:
    mp.spawn(_rank_main, args=(world, free_local_port()), nprocs=world, join=True)
