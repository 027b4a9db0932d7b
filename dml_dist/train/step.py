"""One optimizer step on the global batch: plain, or with cached embedding gradients.

Plain path: embed this rank's B images with gradient, all-gather (``distributed/collectives.py``),
compute this rank's loss share against the global batch, back-propagate W * share, step.
Activation memory grows with B.

Gradient caching (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup", GradCache), used when ``chunk_size`` < B:
1. embed the B images in chunks of ``chunk_size`` under ``no_grad`` (no activations kept),
   saving the random state before each chunk;
2. gather the embeddings with gradient, compute the loss share, and back-propagate W * share
   only to the embeddings: g_BD = d(sum_s W L_s) / d emb_BD (the gather's backward brings
   the other ranks' contributions, see ``collectives``);
3. for each chunk, restore its random state (so dropout and on-device augmentation draw the
   same numbers), re-embed it with gradient and back-propagate the surrogate
   sum(emb_chunk * g_chunk), whose parameter gradient is exactly the chunk's share of
   d(sum_s W L_s) / d theta.
The parameter gradients equal the plain path's; peak activation memory is that of one chunk.
DeepSpeed reduces (ZeRO 0/1) or reduce-scatters (ZeRO 2/3) gradients at a gradient
accumulation boundary; every chunk's backward but the last is marked as not a boundary, so the
reduction happens once, after the last chunk, rather than relying on ``no_sync`` (which
DeepSpeed refuses under ZeRO 2 and 3).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from dml_dist.distributed import collectives

LossFn = Callable[..., torch.Tensor]


@dataclass
class StepResult:
    """What one step produced: the global loss, the gathered embeddings [N, D] (detached) and
    labels [N] of the global batch, and where time went.

    ``skipped`` is true when the global loss or a gradient was not finite: then no parameter
    changed (every rank takes the same decision, from all-reduced values).
    """

    loss: float
    ref_ND: torch.Tensor
    ref_labels_N: torch.Tensor
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: bool = False


class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


def optimizer_step(
    engine: Any, loss_fn: LossFn, images: torch.Tensor, labels_B: torch.Tensor, chunk_size: int = 0
) -> StepResult:
    """One step of ``engine`` on this rank's ``images`` [B, ...] and ``labels_B`` (see module doc)."""
    if 0 < chunk_size < images.shape[0]:
        return _cached_gradient_step(engine, loss_fn, images, labels_B, chunk_size)
    return _plain_step(engine, loss_fn, images, labels_B)


def _plain_step(engine: Any, loss_fn: LossFn, images: torch.Tensor, labels_B: torch.Tensor) -> StepResult:
    clock = _Clock()
    with clock("forward"):
        emb_BD = engine(images).float()
    share, ref_ND, ref_labels_N = _loss_share(loss_fn, emb_BD, labels_B, clock)
    loss = float(collectives.all_reduce_sum(share))
    if not math.isfinite(loss):
        return StepResult(loss, ref_ND.detach(), ref_labels_N, clock.seconds, skipped=True)
    with clock("backward"):
        engine.backward(collectives.scale_for_gradient_averaging(share))
    return _finish(engine, loss, ref_ND, ref_labels_N, clock)


def _cached_gradient_step(
    engine: Any, loss_fn: LossFn, images: torch.Tensor, labels_B: torch.Tensor, chunk_size: int
) -> StepResult:
    clock = _Clock()
    chunks = list(torch.split(images, chunk_size))
    states = []
    with clock("forward"), torch.no_grad():
        parts = []
        for chunk in chunks:
            states.append(_rng_state(chunk.device))
            parts.append(engine(chunk).float())
    emb_BD = torch.cat(parts).requires_grad_(True)
    share, ref_ND, ref_labels_N = _loss_share(loss_fn, emb_BD, labels_B, clock)
    loss = float(collectives.all_reduce_sum(share))
    if not math.isfinite(loss):
        return StepResult(loss, ref_ND.detach(), ref_labels_N, clock.seconds, skipped=True)
    with clock("backward"):
        collectives.scale_for_gradient_averaging(share).backward()
        assert emb_BD.grad is not None
        grads = torch.split(emb_BD.grad, chunk_size)
        for i, (chunk, state, grad) in enumerate(zip(chunks, states, grads, strict=True)):
            _set_rng_state(chunk.device, state)
            engine.set_gradient_accumulation_boundary(i == len(chunks) - 1)
            engine.backward((engine(chunk).float() * grad).sum())
    return _finish(engine, loss, ref_ND, ref_labels_N, clock)


def _finish(engine: Any, loss: float, ref_ND: torch.Tensor, ref_labels_N: torch.Tensor, clock: _Clock) -> StepResult:
    """Step the optimizer unless some rank holds a non-finite gradient (then drop them all).

    Two checks, one per place a gradient lives: ``.grad`` of the module's parameters (ZeRO 0,
    fp32: a plain torch optimizer, checked here before the step), and the partitions of
    DeepSpeed's own optimizers (ZeRO 1-3, bf16), where ``.grad`` is empty after the reduction:
    those skip a step whose all-reduced gradient norm is not finite themselves, and
    ``was_step_applied`` says so, the same on every rank.
    """
    with clock("optimizer"):
        if not _gradients_finite(engine.module):
            engine.zero_grad()
            return StepResult(loss, ref_ND.detach(), ref_labels_N, clock.seconds, skipped=True)
        engine.step()
    skipped = not engine.was_step_applied()
    return StepResult(loss, ref_ND.detach(), ref_labels_N, clock.seconds, skipped=skipped)


def _gradients_finite(model: torch.nn.Module) -> bool:
    """All ranks agree: 1 when every gradient this rank holds in ``.grad`` is finite, summed over ranks.

    Under ZeRO >= 1 ``.grad`` is empty here (see ``_finish``).
    """
    # On the parameters' device (NCCL reduces only GPU tensors) and one host sync for the whole
    # model, not one per parameter.
    device = next(model.parameters()).device
    finite = torch.ones((), device=device)
    for p in model.parameters():
        if p.grad is not None:
            finite = finite * torch.isfinite(p.grad).all()
    flags = collectives.all_reduce_sum(finite)
    return int(flags.item()) == collectives.world_size()


def _loss_share(
    loss_fn: LossFn, emb_BD: torch.Tensor, labels_B: torch.Tensor, clock: _Clock
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's loss share, and the global embeddings [N, D] and labels [N] it was taken against."""
    with clock("all_gather"):
        ref_ND = collectives.gather_with_grad(emb_BD)
        ref_labels_N = collectives.gather_no_grad(labels_B)
    with clock("loss"):
        share = loss_fn(emb_BD, labels_B, ref_ND, ref_labels_N, ref_start=collectives.rank() * emb_BD.shape[0])
    return share, ref_ND, ref_labels_N


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(device: torch.device, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
