"""The collectives section of ``bench gpu``: the all-gather with gradient and each loss's share,
on a real process group, against the single-process CPU result.

One process per GPU on an NCCL group (world size 1 on a one-GPU machine: there the gather and
the reductions of ``distributed/collectives.py`` are the identity by design, and what runs on
NCCL is the group's creation and the barrier of its shutdown); without a GPU, two processes on
a gloo group. Every rank holds B rows of one fixed global batch emb_ND (N = W x B, two rows per
class) and does what ``train/step.py`` does with an embedder's output: rounds it to the step's
precision (bf16 on GPU: the embedder's autocast output), takes it to fp32, gathers it with
gradient, computes its loss share against the global rows, and back-propagates W x share.
Checked against plain autograd on the whole batch in fp32 on the CPU, in the same process:
- the gathered rows equal emb_ND (in the step's precision) exactly;
- the rank's share equals the reference's share of its anchors, and the all-reduced shares the
  reference loss L;
- the rank's embedding gradient / W equals dL / d(its rows) (the gather's backward brings every
  rank's use of them; ``collectives`` states the rule).
Tolerances are relative to the largest reference value: 2e-2 in bf16, 1e-5 in fp32.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from dml_dist.distributed import collectives
from dml_dist.losses import build_loss
from dml_dist.observability.logging import quiet_libraries

TOLERANCE = {"bf16": 2e-2, "fp32": 1e-5}
EMBEDDING_DIM = 128
ROW_NORM = 3.0
"""Rows of norm about 3: N-pair logits of order 1, as with a trained embedder, where bf16's
rounding moves gradients by about 0.3% (raw unit-variance rows, norm 11, give sharp softmaxes
whose gradients move by 1.5%, too near the tolerance to tell a bug from rounding)."""


def run_collectives_check(
    use_gpu: bool, rows_per_rank: int, losses: tuple[str, ...], deadline: float
) -> dict[str, Any]:
    """Spawn the ranks, wait for them until ``deadline`` (``time.monotonic``), compare their figures."""
    world_size = torch.cuda.device_count() if use_gpu else 2
    backend = "nccl" if use_gpu else "gloo"
    with tempfile.TemporaryDirectory() as out:
        context = mp.start_processes(
            _rank_main,
            args=(world_size, collectives.free_local_port(), backend, rows_per_rank, losses, out),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.terminate()
                return {"status": "error", "error": f"{backend}: the {world_size} ranks had not finished in time"}
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world_size)]
    precision = "bf16" if use_gpu else "fp32"
    passed = all(check["passed"] for rank in ranks for check in rank["losses"].values())
    return {
        "status": "ok" if passed else "failed",
        "backend": backend,
        "world_size": world_size,
        "rows_per_rank": rows_per_rank,
        "precision": precision,
        "tolerance": TOLERANCE[precision],
        "ranks": ranks,
    }


def _rank_main(
    rank: int, world_size: int, port: int, backend: str, rows: int, losses: tuple[str, ...], out: str
) -> None:
    quiet_libraries()  # a spawned process starts with Python's default warning filters
    if backend == "nccl":
        collectives.init_local_nccl(rank, world_size, port)
        device, dtype, precision = torch.device("cuda", rank), torch.bfloat16, "bf16"
    else:
        collectives.init_local_gloo(rank, world_size, port)
        device, dtype, precision = torch.device("cpu"), torch.float32, "fp32"
    generator = torch.Generator().manual_seed(0)
    emb_ND = torch.randn(rows * world_size, EMBEDDING_DIM, generator=generator) * ROW_NORM / EMBEDDING_DIM**0.5
    labels_N = torch.arange(rows * world_size // 2).repeat_interleave(2)
    mine = slice(rank * rows, (rank + 1) * rows)
    record: dict[str, Any] = {"rank": rank, "device": str(device), "losses": {}}
    for name in losses:
        record["losses"][name] = _check_loss(name, emb_ND, labels_N, mine, device, dtype, TOLERANCE[precision])
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    collectives.shutdown()


def _check_loss(
    name: str,
    emb_ND: torch.Tensor,
    labels_N: torch.Tensor,
    mine: slice,
    device: torch.device,
    dtype: torch.dtype,
    tolerance: float,
) -> dict[str, Any]:
    loss_fn = build_loss(name)
    reference = emb_ND.clone().requires_grad_(True)
    loss = loss_fn(reference, labels_N)
    loss.backward()
    assert reference.grad is not None
    start = mine.start or 0
    ref_share = float(loss_fn(emb_ND[mine], labels_N[mine], emb_ND, labels_N, ref_start=start))

    local_BD = emb_ND[mine].to(device, dtype).requires_grad_(True)
    gathered_ND = collectives.gather_with_grad(local_BD.float())
    gathered_labels_N = collectives.gather_no_grad(labels_N[mine].to(device))
    share = loss_fn(local_BD.float(), labels_N[mine].to(device), gathered_ND, gathered_labels_N, ref_start=start)
    total = collectives.all_reduce_sum(share)
    collectives.scale_for_gradient_averaging(share).backward()
    assert local_BD.grad is not None
    grad_BD = local_BD.grad.float().cpu() / collectives.world_size()

    errors = {
        "gather": float((gathered_ND.detach().cpu() - emb_ND.to(dtype).float()).abs().max()),
        "labels": float((gathered_labels_N.cpu() != labels_N).sum()),
        "share": _relative(float(share.detach()), ref_share),
        "loss": _relative(float(total), float(loss.detach())),
        "gradient": float((grad_BD - reference.grad[mine]).abs().max() / reference.grad[mine].abs().max()),
    }
    passed = errors["gather"] == 0 and errors["labels"] == 0
    passed = passed and all(errors[key] <= tolerance for key in ("share", "loss", "gradient"))
    return {"loss": float(total), "reference_loss": float(loss.detach()), "errors": errors, "passed": passed}


def _relative(value: float, reference: float) -> float:
    return abs(value - reference) / max(abs(reference), 1e-12)
