"""Every ``torch.distributed`` call of dml-dist, and the gradient rule they implement.

Gathering. Each of the W ranks embeds its B rows (emb_BD). ``gather_with_grad`` concatenates
all ranks' rows in canonical rank order (rank 0 first, on every rank) into ref_ND, N = W * B,
with ``torch.distributed.nn.functional.all_gather``, which is autograd-aware: its backward
sums, over all ranks, the gradients that each rank's loss sent to each gathered slice and
returns to rank r the sum for its own slice (a reduce-scatter). So d(sum_s L_s)/d emb_r
arrives at rank r, where L_s is rank s's loss share.

Loss scale. Each rank's loss share L_r sums its local anchors' terms and divides by the global
normalizer, so sum_r L_r = L, the single-process loss on the global batch (``losses/base.py``).
Rank r's parameter gradient after backward is then g_r = d(sum_s L_s)/d theta restricted to the
paths through rank r's rows, and sum_r g_r = dL/d theta. DeepSpeed (like DDP) *averages*
parameter gradients over ranks, giving (1/W) sum_r g_r; ``scale_for_gradient_averaging``
multiplies the loss by W before backward so that the averaged gradient is exactly dL/d theta,
one single-process step on the global batch. The logged loss is ``all_reduce_sum`` of the
unscaled shares, i.e. L.

Without an initialised process group (one process) every function is the identity, so the same
training code runs in tests and notebooks.
"""

from __future__ import annotations

import os
import socket
import warnings
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def free_local_port() -> int:
    """A free TCP port on 127.0.0.1, for a process group of local processes."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def init_local_gloo(rank: int, world_size: int, port: int) -> None:
    """Join a gloo group of ``world_size`` processes on this machine (benchmarks, tests).

    Sets the variables DeepSpeed reads (``LOCAL_RANK`` among them) and one torch thread per
    process, as a Ray Train CPU worker has.
    """
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)


def init_local_nccl(rank: int, world_size: int, port: int) -> None:
    """Join an NCCL group of ``world_size`` processes on this machine, rank r on GPU r
    (``bench gpu``); the variables DeepSpeed reads are set as in ``init_local_gloo``."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank)
    )
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", rank=rank, world_size=world_size, device_id=device)


def shutdown() -> None:
    """Leave the process group after every rank has arrived."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def gather_with_grad(x_BD: torch.Tensor) -> torch.Tensor:
    """All ranks' rows concatenated in rank order, [W * B, ...], differentiable (see module doc)."""
    if world_size() == 1:
        return x_BD
    with warnings.catch_warnings():
        # Deprecated in torch 2.13 in favour of a private API; still exact (tests/distributed).
        warnings.simplefilter("ignore", FutureWarning)
        parts = dist_fn.all_gather(x_BD)
    return torch.cat(parts, dim=0)


def all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks, differentiable: the backward sums every rank's gradient of the
    result (global batch norm's statistics, ``models/global_batchnorm.py``)."""
    if world_size() == 1:
        return x
    with warnings.catch_warnings():
        # Deprecated in torch 2.13 as all_gather above; without this it warns at every call site.
        warnings.simplefilter("ignore", FutureWarning)
        return dist_fn.all_reduce(x)


def gather_no_grad(x_B: torch.Tensor) -> torch.Tensor:
    """All ranks' rows concatenated in rank order, for tensors that need no gradient (labels)."""
    if world_size() == 1:
        return x_B
    parts = [torch.empty_like(x_B) for _ in range(world_size())]
    dist.all_gather(parts, x_B.contiguous())
    return torch.cat(parts, dim=0)


def scale_for_gradient_averaging(loss_share: torch.Tensor) -> torch.Tensor:
    """W * loss share: after the engine averages gradients over W ranks they equal dL/d theta."""
    return loss_share * world_size()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of ``value`` over ranks (a detached copy)."""
    total = value.detach().clone()
    if world_size() > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (the classes of a step, chosen on rank 0)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (file lists of a checkpoint, placements)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def first_on_node() -> bool:
    """Whether this rank is the lowest rank of its node: the one that does the node's one-off work
    (copying a checkpoint into node-local scratch). Every rank calls it (it gathers).

    A node is a Ray node (its id), not an address: Ray Train's ``LOCAL_RANK`` groups workers by
    IP, so two nodes behind one address (containers on a host network, the 2-node test) would
    share one copier, and the other node's ranks would read a copy that nobody made. Without
    Ray (``init_local_gloo``: processes of one machine) every rank is on one node."""
    nodes = all_gather_object(_node_id())
    return nodes.index(nodes[rank()]) == rank()


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
