"""Cross-batch memory (XBM: Wang, Zhang, Huang and Scott, "Cross-Batch Memory for Embedding
Learning", CVPR 2020), identical bit for bit on every rank.

The memory is a ring buffer of the last M rows of the *global* batches: embeddings [M, D],
labels [M] and the step each row was written. After each step every rank writes the
all-gathered batch ref_ND (canonical rank order, the same tensor on every rank) into the same
slots, so all ranks hold the same memory without any communication of their own.

The loss at step t (t >= ``start_step``), as XBM's official code computes it
(MalongTech/research-xbm, ``engine/trainer.py``)::

    L = L(anchors = global batch, candidates = global batch)                  (the batch term)
      + w * L(anchors = global batch, candidates = memory after enqueueing step t's batch)

Both terms are the same registered loss; the second extends its candidate set with memory rows
that carry no gradient (``ref_anchors`` in ``base.py``: the global batch is the anchor set, its
normalizers count (anchor, candidate) pairs). ``w`` multiplies that whole second loss value,
regularizers included (Sohn's norm penalty of ``tuplet``, ``nu * beta`` of ``margin``), as the
official code's second call of the criterion does.

The current batch's own rows. The official code enqueues the batch (detached) *before* it
computes the memory term, so the memory term's candidates hold the current batch too, and a
row's own copy is dropped by similarity (positives with cosine >= 1 - 1e-5).
pytorch-metric-learning's ``CrossBatchMemory`` does the same and drops self pairs by index. Here
the memory is written *after* the optimizer step (``enqueue``, so a skipped step writes nothing and a
checkpoint never holds half a step), and the memory term's candidates are built as the memory
will be after that write: the current global batch, detached, followed by the M - N most
recent older rows. The anchors therefore sit at ``ref_start`` in the candidate set, exactly as
in the batch term, and each anchor's own copy is excluded by index (an older copy of the same
image, embedded at an earlier step, stays a positive, as in the official code). With the memory
still empty (the first active step) the memory term is the batch loss with detached candidates.

Stale rows. Rows written k steps ago were embedded by the model of k steps ago; XBM relies on
the "slow drift" of embeddings once training has settled, and keeps a plain FIFO: no
age-based eviction. A row is at most ceil(M / N) - 1 steps old once the memory is full.
``start_step`` delays both the writes and the memory term (the official code enqueues and uses
the memory only after ``START_ITERATION``, 1,000 to 2,000 of its 35,000 iterations), so the
fast-drifting embeddings of early training never enter it. ``stats`` reports fill and age.

Exactness: every rank's memory term is its share of the global memory term (same normalizers,
from the global batch and the whole candidate set), so the shares summed over ranks equal the
single-process loss with the same memory, gradients included (tests/distributed).

Memory: M x D fp32 embeddings + M int64 labels + M int64 steps per rank (``nbytes``): 16.9 MB
for M = 8,192, D = 512. Work: the memory term is B x M x D on each rank, beside the batch term's
B x N x D; losses whose normalizers depend on values (triplet, margin, histogram, DRO,
contrastive with ``reduction="nonzero"``) also compute N x M x D without gradient on every rank
when W > 1, as they compute N x N x D for the batch term.

Use (the training loop; the memory lives outside the engine's module, so bf16 never casts it,
ZeRO never partitions it and the exported model never carries it)::

    memory = build_memory(config.memory, config.model.embedding_dim, device)
    loss_fn = LossWithMemory(engine.module.loss, memory, step)      # each step: the plain loss signature
    result = optimizer_step(engine, loss_fn, images, labels_B, chunk_size)
    if not result.skipped:                                          # the same decision on every rank
        memory.enqueue(result.ref_ND, collectives.gather_no_grad(labels_B), step)
    client_state["memory"] = memory.state_dict()                    # checkpoint (ranks hold the same)
    memory.load_state_dict(client_state.get("memory", {}))          # resume, on every rank
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

LossFn = Callable[..., torch.Tensor]


class CrossBatchMemory:
    """A ring buffer of the last ``size`` global embeddings, their labels and write steps.

    Args:
        size: M, the number of rows kept (at least the global batch N).
        dim: D, the embedding size.
        weight: w of the memory term. start_step: first step that writes and uses the memory.
        device, dtype: where and how the rows are stored (fp32 unless testing in fp64).
    """

    def __init__(
        self,
        size: int,
        dim: int,
        weight: float = 1.0,
        start_step: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if size <= 0 or dim <= 0:
            raise ValueError(f"memory.size: expected a positive size and dimension, got {size} x {dim}")
        self.size, self.dim, self.weight, self.start_step = size, dim, weight, start_step
        self.embeddings_MD = torch.zeros(size, dim, device=device, dtype=dtype)
        self.labels_M = torch.zeros(size, dtype=torch.long, device=device)
        self.steps_M = torch.full((size,), -1, dtype=torch.long, device=device)  # -1: never written
        self.next_slot = 0
        self.num_filled = 0

    def is_active(self, step: int) -> bool:
        """Whether step ``step`` (0-based) uses and writes the memory."""
        return step >= self.start_step

    @property
    def nbytes(self) -> int:
        """Bytes this rank holds for the memory (every rank holds the same)."""
        return sum(t.numel() * t.element_size() for t in (self.embeddings_MD, self.labels_M, self.steps_M))

    @torch.no_grad()
    def enqueue(self, emb_ND: torch.Tensor, labels_N: torch.Tensor, step: int) -> bool:
        """Write step ``step``'s global batch (canonical rank order) over the oldest rows.

        Nothing is written before ``start_step`` or when a row is not finite (a diverged step
        must not poison the next M / N steps); every rank holds the same ``emb_ND``, so every rank
        takes the same decision. Returns whether the batch was written.
        """
        num_rows = emb_ND.shape[0]
        if num_rows > self.size:
            raise ValueError(f"memory.size: {self.size} rows cannot hold a global batch of {num_rows}")
        if emb_ND.shape[1:] != (self.dim,) or labels_N.shape != (num_rows,):
            raise ValueError(f"memory: expected [N, {self.dim}] rows and [N] labels, got {tuple(emb_ND.shape)}")
        if not self.is_active(step) or not bool(torch.isfinite(emb_ND).all()):
            return False
        slots = (self.next_slot + torch.arange(num_rows, device=self.labels_M.device)) % self.size
        self.embeddings_MD.index_copy_(0, slots, emb_ND.detach().to(self.embeddings_MD))
        self.labels_M.index_copy_(0, slots, labels_N.to(self.labels_M))
        self.steps_M.index_fill_(0, slots, step)
        self.next_slot = (self.next_slot + num_rows) % self.size
        self.num_filled = min(self.size, self.num_filled + num_rows)
        return True

    def newest(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``count`` most recently written rows (at most the filled ones), oldest first."""
        count = min(count, self.num_filled)
        slots = (self.next_slot - count + torch.arange(count, device=self.labels_M.device)) % self.size
        return self.embeddings_MD.index_select(0, slots), self.labels_M.index_select(0, slots)

    def candidates(self, ref_ND: torch.Tensor, ref_labels_N: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory term's candidates [C, D], [C]: the global batch (detached), then the M - N
        newest older rows: the memory as it will be once this batch is written (module doc)."""
        num_rows = ref_ND.shape[0]
        if num_rows > self.size:
            raise ValueError(f"memory.size: {self.size} rows cannot hold a global batch of {num_rows}")
        older_KD, older_labels_K = self.newest(self.size - num_rows)
        cand_CD = torch.cat([ref_ND.detach().to(older_KD.dtype), older_KD])
        return cand_CD, torch.cat([ref_labels_N.to(older_labels_K.dtype), older_labels_K])

    def stats(self, step: int) -> dict[str, float]:
        """Fill (share of slots written) and age in steps (mean, max) of the written rows at ``step``."""
        written = self.steps_M[self.steps_M >= 0]
        ages = (step - written).to(torch.float64)
        return {
            "memory_fill": self.num_filled / self.size,
            "memory_age_mean_steps": float(ages.mean()) if ages.numel() else 0.0,
            "memory_age_max_steps": float(ages.max()) if ages.numel() else 0.0,
            "memory_bytes": float(self.nbytes),
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue with the same memory (CPU tensors)."""
        return {
            "embeddings": self.embeddings_MD.cpu().clone(),
            "labels": self.labels_M.cpu().clone(),
            "steps": self.steps_M.cpu().clone(),
            "next_slot": self.next_slot,
            "num_filled": self.num_filled,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``; the size and dimension must be this memory's."""
        if not state:
            raise ValueError(f"memory.size: the checkpoint holds no memory, the config asks for {self.size} rows")
        shape = tuple(state["embeddings"].shape)
        if shape != (self.size, self.dim):
            raise ValueError(f"memory.size: the checkpoint holds a memory of {shape}, the config asks for "
                             f"{(self.size, self.dim)}")  # fmt: skip
        self.embeddings_MD.copy_(state["embeddings"])
        self.labels_M.copy_(state["labels"])
        self.steps_M.copy_(state["steps"])
        self.next_slot, self.num_filled = int(state["next_slot"]), int(state["num_filled"])


class NoMemory:
    """The memory when ``memory.size`` is 0: never active, writes nothing, holds nothing."""

    size, weight, start_step, nbytes = 0, 0.0, 0, 0

    def is_active(self, step: int) -> bool:
        return False

    def enqueue(self, emb_ND: torch.Tensor, labels_N: torch.Tensor, step: int) -> bool:
        return False

    def stats(self, step: int) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError("memory.size: the checkpoint holds a memory, the config has none (size 0)")


Memory = CrossBatchMemory | NoMemory


class MemorySettings(Protocol):
    """The fields of ``config.MemoryConfig`` that a memory is built from (losses sit below config)."""

    @property
    def size(self) -> int: ...
    @property
    def weight(self) -> float: ...
    @property
    def start_step(self) -> int: ...


def build_memory(config: MemorySettings, dim: int, device: torch.device | str = "cpu") -> Memory:
    """The memory of ``config`` for D = ``dim`` embeddings, or ``NoMemory`` when its size is 0."""
    if config.size == 0:
        return NoMemory()
    return CrossBatchMemory(config.size, dim, config.weight, config.start_step, device)


def combined_loss(
    loss_fn: LossFn,
    emb_BD: torch.Tensor,
    labels_B: torch.Tensor,
    ref_ND: torch.Tensor | None,
    ref_labels_N: torch.Tensor | None,
    ref_start: int,
    memory: Memory,
    step: int,
) -> torch.Tensor:
    """This rank's share of L_batch + w * L_memory at ``step`` (module doc); the batch loss
    alone when the memory is off or not yet active. Reads the memory, never writes it."""
    if ref_ND is None or ref_labels_N is None:
        ref_ND, ref_labels_N, ref_start = emb_BD, labels_B, 0
    batch = loss_fn(emb_BD, labels_B, ref_ND, ref_labels_N, ref_start=ref_start)
    if not memory.is_active(step):
        return batch
    assert isinstance(memory, CrossBatchMemory)
    cand_CD, cand_labels_C = memory.candidates(ref_ND, ref_labels_N)
    from_memory = loss_fn(emb_BD, labels_B, cand_CD, cand_labels_C, ref_start=ref_start, ref_anchors=ref_ND.shape[0])
    return batch + memory.weight * from_memory


class LossWithMemory:
    """``loss_fn`` with the memory term of ``step``, behind the plain loss signature, so the step
    code (``train/step.py``, plain or GradCache) calls it like any loss."""

    def __init__(self, loss_fn: LossFn, memory: Memory, step: int):
        self.loss_fn, self.memory, self.step = loss_fn, memory, step

    def __call__(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
        ref_start: int = 0,
    ) -> torch.Tensor:
        return combined_loss(
            self.loss_fn, embeddings, labels, ref_embeddings, ref_labels, ref_start, self.memory, self.step
        )
