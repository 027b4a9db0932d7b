"""Cross-batch memory on W = 2, 3, 4 gloo ranks: over several steps of a small model, the loss
and the gradients (model parameters and the loss's own, e.g. the margin loss's beta) equal the
single-process loss on the concatenated batch with the same memory; the memory is identical bit
for bit on every rank; its rows carry no gradient.

Each rank embeds its rows with a two-layer net, gathers with ``gather_with_grad``, computes its
share of L_batch + w * L_memory (``combined_loss``), backpropagates
``scale_for_gradient_averaging(share)``, averages gradients over ranks by hand as the engine
would, steps SGD, and writes the gathered batch into its memory. The single-process reference
runs in the same process from the same parameters and a copy of the same memory.

A second test runs the real step code (``train/step.py``: DeepSpeed, plain and GradCache
chunks) with ``LossWithMemory`` as the loss, the wiring the training loop uses.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dml_dist.distributed import collectives
from dml_dist.losses import LOSSES, build_loss
from dml_dist.losses.memory import CrossBatchMemory, LossWithMemory, combined_loss

NUM_ROWS, IN_DIM, DIM, STEPS = 24, 10, 6, 4
MEMORY_SIZE, WEIGHT, START = 60, 0.5, 1  # step 0 writes nothing; steps 1.. fill and wrap the memory
PARAMS = {"dro_topk": {"k": 60}, "dro_topk_pn": {"k_pos": 10, "k_neg": 40}}
MEMORY_LOSSES = sorted(name for name in LOSSES if build_loss(name).takes_memory)


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step``: 8 classes x 3 rows, drawn from 12 classes."""
    gen = torch.Generator().manual_seed(100 + step)
    classes = torch.randperm(12, generator=gen)[:8]
    labels = classes.repeat_interleave(3)[torch.randperm(NUM_ROWS, generator=gen)]
    return torch.randn(NUM_ROWS, IN_DIM, generator=gen, dtype=torch.float64), labels


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(IN_DIM, 16), torch.nn.Tanh(), torch.nn.Linear(16, DIM)).double()


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


def _single_process(name: str, model: torch.nn.Module, loss_fn: torch.nn.Module, memory: CrossBatchMemory, step: int):  # type: ignore[no-untyped-def]
    """(loss, gradients) of the whole batch in one process, from copies of the same state."""
    model, loss_fn, same_memory = copy.deepcopy(model), copy.deepcopy(loss_fn), copy.deepcopy(memory)
    model.zero_grad()
    loss_fn.zero_grad()
    inputs, labels = _batch(step)
    loss = combined_loss(loss_fn, model(inputs), labels, None, None, 0, same_memory, step)
    loss.backward()
    return loss.detach(), _grads(model) + _grads(loss_fn)


def _run_loss(name: str, rank: int, world: int) -> None:
    model = _model()
    loss_fn = build_loss(name, **PARAMS.get(name, {})).double()
    params = list(model.parameters()) + list(loss_fn.parameters())
    memory = CrossBatchMemory(MEMORY_SIZE, DIM, WEIGHT, START, dtype=torch.float64)
    rows = NUM_ROWS // world
    for step in range(STEPS):
        expected_loss, expected_grads = _single_process(name, model, loss_fn, memory, step)
        for p in params:
            p.grad = None
        inputs, labels = _batch(step)
        emb = model(inputs[rank * rows : (rank + 1) * rows])
        local_labels = labels[rank * rows : (rank + 1) * rows]
        ref, ref_labels = collectives.gather_with_grad(emb), collectives.gather_no_grad(local_labels)
        share = combined_loss(loss_fn, emb, local_labels, ref, ref_labels, rank * rows, memory, step)
        collectives.scale_for_gradient_averaging(share).backward()
        grads = _grads(model) + _grads(loss_fn)
        for g in grads:
            dist.all_reduce(g)
            g /= world
        where = f"{name} W={world} step {step}"
        torch.testing.assert_close(collectives.all_reduce_sum(share), expected_loss, msg=f"{where}: loss")
        for g, e in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(g, e, msg=f"{where}: gradient")
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= 0.1 * g
        assert memory.enqueue(ref.detach(), ref_labels, step) == (step >= START)
        assert not memory.embeddings_MD.requires_grad and memory.embeddings_MD.grad_fn is None
    _assert_identical_on_every_rank(memory, world, name)


def _assert_identical_on_every_rank(memory: CrossBatchMemory, world: int, name: str) -> None:
    """Every rank's memory equals rank 0's, bit for bit (rows, labels, steps, write position)."""
    assert memory.num_filled == MEMORY_SIZE  # the memory wrapped during the run
    for tensor in (memory.embeddings_MD, memory.labels_M, memory.steps_M):
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor)
        assert all(torch.equal(part.view(torch.uint8), parts[0].view(torch.uint8)) for part in parts), name
    positions = [None] * world
    dist.all_gather_object(positions, (memory.next_slot, memory.num_filled))
    assert len(set(positions)) == 1, (name, positions)


def _rank_main(rank: int, world: int, port: int) -> None:
    collectives.init_local_gloo(rank, world, port)
    try:
        for name in MEMORY_LOSSES:
            _run_loss(name, rank, world)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3, 4])
def test_memory_loss_equals_the_single_process_loss_and_memory_is_identical(world: int) -> None:
    mp.spawn(_rank_main, args=(world, collectives.free_local_port()), nprocs=world, join=True)


# ----------------------------------------------------------------------------- through train/step.py


def _step_rank_main(rank: int, world: int, port: int, chunk_size: int, out: str) -> None:
    from dml_dist.config import EngineConfig, ModelConfig
    from dml_dist.models.embedder import build_model
    from dml_dist.train.engine import build_engine
    from dml_dist.train.step import optimizer_step

    collectives.init_local_gloo(rank, world, port)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(channels=[8, 16], embedding_dim=DIM))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    rows = NUM_ROWS // world
    engine = build_engine(model, EngineConfig(zero_stage=1, precision="fp32"), rows, False, rank, optimizer)
    # Without MS's pair mining: its hard thresholds can flip on a last-bit difference between the
    # sharded and the one-process similarities (after an lr = 1 step), which says nothing about
    # the step code; the mined form is compared on 2, 3 and 4 ranks above.
    loss_fn = build_loss("multi_similarity", mining=False)
    memory = CrossBatchMemory(MEMORY_SIZE, DIM, WEIGHT, 0)
    report = []
    for step in range(3):
        gen = torch.Generator().manual_seed(step)
        images = torch.randn(NUM_ROWS, 1, 16, 16, generator=gen)
        labels = torch.arange(8).repeat_interleave(3)[torch.randperm(NUM_ROWS, generator=gen)]
        reference = copy.deepcopy(engine.module)  # the single-process step, same parameters and memory
        single = combined_loss(loss_fn, reference(images), labels, None, None, 0, memory, step)
        single.backward()
        expected = {n: p.grad.clone() for n, p in reference.named_parameters()}
        before = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
        share = slice(rank * rows, (rank + 1) * rows)
        result = optimizer_step(engine, LossWithMemory(loss_fn, memory, step), images[share], labels[share], chunk_size)
        grads = {n: before[n] - p.detach() for n, p in engine.module.named_parameters()}  # lr = 1
        report.append({"loss": (result.loss, float(single)), "grads": (grads, expected)})
        memory.enqueue(result.ref_ND, collectives.gather_no_grad(labels[share]), step)
    if rank == 0:
        torch.save(report, out)
    collectives.shutdown()


@pytest.mark.parametrize("chunk_size", [0, 4])
def test_loss_with_memory_through_the_step_code_equals_one_process(chunk_size: int, tmp_path: Path) -> None:
    out = tmp_path / "report.pt"
    mp.spawn(
        _step_rank_main,
        args=(2, collectives.free_local_port(), chunk_size, str(out)),
        nprocs=2,
        join=True,
    )
    for step, row in enumerate(torch.load(out, weights_only=True)):
        distributed, single = row["loss"]
        assert distributed == pytest.approx(single, rel=1e-5), step
        grads, expected = row["grads"]
        for name, g in grads.items():
            torch.testing.assert_close(g, expected[name], rtol=1e-4, atol=1e-6, msg=f"step {step} {name}")
