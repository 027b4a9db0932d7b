"""The loss template: shape checks and reference-set handling, one hook per loss.

Contract (every loss, and the training loop that calls it)::

    loss(embeddings, labels, ref_embeddings=None, ref_labels=None, ref_start=0, ref_anchors=None) -> scalar

``embeddings`` [B, D] are this rank's anchors and ``ref_embeddings`` [N, D] the global candidate
set in canonical rank order; this rank's rows sit at ``ref[ref_start : ref_start + B]``, which is
how a row is kept from pairing with itself. Without ``ref_*`` the anchors are their own
candidates (one process). Each loss returns this rank's *share* of the global loss: its local
terms divided by a normalizer computed from the whole reference set, so that the shares summed
over ranks equal the single-process loss on the global batch, gradients included.

pytorch-metric-learning's keyword ``ref_emb`` is accepted for ``ref_embeddings`` (``ref_labels``
is the same name in both), so ``loss(emb, labels, ref_emb=ref, ref_labels=ref_labels)`` runs
unchanged. The meaning is this contract's: the anchors are rows ``ref_start : ref_start + B`` of
the reference set. A reference set that does not contain the anchors (PML's use of ``ref_emb``
for a separate memory) is a different contract and is not what these losses compute.

Candidates that are not anchors (a cross-batch memory, ``memory.py``): ``ref_anchors`` = A says
that only the first A rows of the reference set are anchors of the global loss (the global
batch); rows A..N-1 are extra candidates, usually without gradient. Normalizers then run over the
pairs (global anchor, candidate), A x N, rather than N x N: the loss is the same loss with the
candidate set extended. ``None`` means every row is an anchor (A = N), the plain contract. A loss
for which extra candidates make no sense sets ``takes_memory = False`` and refuses ``A < N``.
"""

from __future__ import annotations

import torch
from torch import nn


class MetricLoss(nn.Module):
    """Base class: validates inputs, resolves the reference set, calls ``compute``."""

    takes_memory: bool = True
    """Whether candidates beyond the anchors (``ref_anchors`` < N, a cross-batch memory) make sense."""
    memory_refusal: str = ""
    """Why not, when ``takes_memory`` is false (one sentence, for the config error)."""

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
        ref_start: int = 0,
        ref_anchors: int | None = None,
        *,
        ref_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if ref_emb is not None:  # pytorch-metric-learning's name
            if ref_embeddings is not None:
                raise ValueError("ref_emb and ref_embeddings name the same argument; give one of them")
            ref_embeddings = ref_emb
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings: expected [B, D], got shape {tuple(embeddings.shape)}")
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(f"labels: expected shape [{embeddings.shape[0]}], got {tuple(labels.shape)}")
        if (ref_embeddings is None) != (ref_labels is None):
            raise ValueError("ref_embeddings and ref_labels must be given together")
        if ref_embeddings is None or ref_labels is None:
            ref_embeddings, ref_labels, ref_start = embeddings, labels, 0
        if ref_embeddings.dim() != 2 or ref_embeddings.shape[1] != embeddings.shape[1]:
            raise ValueError(f"ref_embeddings: expected [N, {embeddings.shape[1]}], got {tuple(ref_embeddings.shape)}")
        if ref_labels.shape != ref_embeddings.shape[:1]:
            raise ValueError(f"ref_labels: expected shape [{ref_embeddings.shape[0]}], got {tuple(ref_labels.shape)}")
        if not 0 <= ref_start <= ref_embeddings.shape[0] - embeddings.shape[0]:
            raise ValueError(
                f"ref_start: {ref_start} does not place {embeddings.shape[0]} rows inside the reference set"
            )
        num_anchors = ref_embeddings.shape[0] if ref_anchors is None else ref_anchors
        if not ref_start + embeddings.shape[0] <= num_anchors <= ref_embeddings.shape[0]:
            raise ValueError(
                f"ref_anchors: {ref_anchors} does not hold this rank's anchors (rows {ref_start}.."
                f"{ref_start + embeddings.shape[0] - 1}) inside {ref_embeddings.shape[0]} reference rows"
            )
        if num_anchors < ref_embeddings.shape[0] and not self.takes_memory:
            raise ValueError(f"memory: {type(self).__name__} takes no memory candidates: {self.memory_refusal}")
        return self.compute(embeddings, labels, ref_embeddings, ref_labels, ref_start, num_anchors)

    def compute(
        self,
        emb_BD: torch.Tensor,
        labels_B: torch.Tensor,
        ref_ND: torch.Tensor,
        ref_labels_N: torch.Tensor,
        ref_start: int,
        num_anchors: int,
    ) -> torch.Tensor:
        """This rank's share of the loss; subclasses write only this. The global anchors are
        ``ref_ND[:num_anchors]`` (all of it unless a memory extends the candidates)."""
        raise NotImplementedError
