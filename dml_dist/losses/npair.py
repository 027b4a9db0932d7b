"""Multi-class and one-vs-one N-pair losses (Sohn, "Improved Deep Metric Learning with
Multi-class N-pair Loss Objective", NIPS 2016).

For N classes with one (anchor f_i, positive f_i^+) pair each, Sohn's N-pair-mc loss is

    L = 1/N sum_i log(1 + sum_{j != i} exp(f_i^T f_j^+ - f_i^T f_i^+))
        + lambda/4 * (1/N sum_i |f_i|^2 + 1/N sum_i |f_i^+|^2)

(``npair_mc``), i.e. a softmax cross-entropy of anchor i over the N positives with target i, plus the L2
penalty on embedding norms of the paper's section 3.2.2 (the form of TensorFlow's
``npairs_loss``, lambda = 0.002). Embeddings are unnormalized, as in the paper; set
``temperature`` to use cosine similarity / temperature instead (a common modern variant).

The one-vs-one variant (``npair_ovo``, the paper's N-pair-ovo) sums N - 1 separate 2-class
terms instead of one N-class softmax:

    L = 1/N sum_i sum_{j != i} log(1 + exp(f_i^T f_j^+ - f_i^T f_i^+)) + the same L2 penalty

Pairs in a batch: for every class, its first row (in reference order) is the anchor and its
second row the positive; further rows of that class are not used (N-pair batch construction
has K = 2). This matches pytorch-metric-learning's ``NPairsLoss``, which also keeps one pair
per class, apart from its missing norm penalty (tests use ``l2_reg=0`` for that comparison). N-pair-ovo
has no pytorch-metric-learning counterpart; it is tested against a loop over the formula.

Shapes: anchors of this rank A <= B/2, classes with a pair in the reference set P (= N).
Work is A x P x D (local anchors against global positives), not N x N.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dml_dist.losses.base import MetricLoss
from dml_dist.losses.pairs import at_least_fp32 as _at_least_fp32
from dml_dist.losses.pairs import l2_normalize


def check_npair_params(l2_reg: float, temperature: float | None) -> None:
    """Validate the hyperparameters shared by the N-pair family (N-pair-mc, N-pair-ovo, tuplet)."""
    if l2_reg < 0:
        raise ValueError(f"loss.l2_reg: expected >= 0, got {l2_reg}")
    if temperature is not None and temperature <= 0:
        raise ValueError(f"loss.temperature: expected > 0 or null, got {temperature}")


def first_two_rows_per_label(labels_N: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(anchor rows, positive rows): for each label with >= 2 rows, its first and second row.

    Both are [P] index tensors ordered by label, so anchor_rows[p] and positive_rows[p] are a
    pair of class p.
    """
    order = torch.sort(labels_N, stable=True).indices
    sorted_labels = labels_N[order]
    is_first = torch.ones_like(sorted_labels, dtype=torch.bool)
    is_first[1:] = sorted_labels[1:] != sorted_labels[:-1]
    has_second = torch.zeros_like(is_first)
    has_second[:-1] = is_first[:-1] & ~is_first[1:]
    first_pos = torch.nonzero(has_second).squeeze(1)
    return order[first_pos], order[first_pos + 1]


class NPairMCLoss(MetricLoss):
    """Multi-class N-pair loss with Sohn's L2 norm penalty (see module docstring).

    Args:
        l2_reg: lambda of the norm penalty (paper: 0.002); 0 disables it.
        temperature: if set, similarities are cosine / temperature instead of dot products.
    """

    takes_memory = False
    memory_refusal = (
        "its candidates are the second rows of the batch's class pairs (Sohn's N-pair construction), "
        "and memory entries are not pairs; use loss.name: tuplet, its all-pairs form, which takes memory"
    )

    def __init__(self, l2_reg: float = 0.002, temperature: float | None = None):
        super().__init__()
        check_npair_params(l2_reg, temperature)
        self.l2_reg = l2_reg
        self.temperature = temperature

    def _logits(
        self, emb_BD: torch.Tensor, ref_ND: torch.Tensor, ref_labels_N: torch.Tensor, ref_start: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits [A, P] of local anchors vs all positives, targets [A], anchor rows, positive rows)."""
        anchor_rows_P, positive_rows_P = first_two_rows_per_label(ref_labels_N)
        local_end = ref_start + emb_BD.shape[0]
        is_local_P = (anchor_rows_P >= ref_start) & (anchor_rows_P < local_end)
        targets_A = torch.nonzero(is_local_P).squeeze(1)
        # index_select: its backward (index_add) is faster than advanced indexing's on CPU.
        anchors_AD = _at_least_fp32(emb_BD.index_select(0, anchor_rows_P[targets_A] - ref_start))
        positives_PD = _at_least_fp32(ref_ND.index_select(0, positive_rows_P))
        if self.temperature is not None:
            anchors_AD = l2_normalize(anchors_AD)
            positives_PD = l2_normalize(positives_PD)
        logits_AP = anchors_AD @ positives_PD.T
        if self.temperature is not None:
            logits_AP = logits_AP / self.temperature
        return logits_AP, targets_A, anchor_rows_P, positive_rows_P

    def _pair_terms(self, logits_AP: torch.Tensor, targets_A: torch.Tensor) -> torch.Tensor:
        """Sum over local anchors of the N-pair-mc term (softmax cross-entropy)."""
        return F.cross_entropy(logits_AP, targets_A, reduction="sum")

    def compute(
        self,
        emb_BD: torch.Tensor,
        labels_B: torch.Tensor,
        ref_ND: torch.Tensor,
        ref_labels_N: torch.Tensor,
        ref_start: int,
        num_anchors: int,
    ) -> torch.Tensor:
        logits_AP, targets_A, anchor_rows_P, positive_rows_P = self._logits(emb_BD, ref_ND, ref_labels_N, ref_start)
        num_pairs = anchor_rows_P.numel()
        if num_pairs == 0:
            return emb_BD.sum() * 0.0
        loss = self._pair_terms(logits_AP, targets_A) / num_pairs
        if self.l2_reg > 0:
            loss = (
                loss
                + self.l2_reg / 4 * self._local_norm_sum(emb_BD, anchor_rows_P, positive_rows_P, ref_start) / num_pairs
            )
        return loss

    @staticmethod
    def _local_norm_sum(
        emb_BD: torch.Tensor, anchor_rows_P: torch.Tensor, positive_rows_P: torch.Tensor, ref_start: int
    ) -> torch.Tensor:
        """Sum of |f|^2 over this rank's rows that are an anchor or a positive of some pair."""
        rows = torch.cat([anchor_rows_P, positive_rows_P]) - ref_start
        rows = rows[(rows >= 0) & (rows < emb_BD.shape[0])]
        return _at_least_fp32(emb_BD.index_select(0, rows)).pow(2).sum()


class NPairOVOLoss(NPairMCLoss):
    """One-vs-one N-pair loss (N-pair-ovo) with Sohn's L2 norm penalty (see module docstring).

    Args: as ``NPairMCLoss`` (l2_reg = 0.002, temperature = None).
    """

    def _pair_terms(self, logits_AP: torch.Tensor, targets_A: torch.Tensor) -> torch.Tensor:
        positive_A1 = logits_AP.gather(1, targets_A[:, None])
        terms_AP = F.softplus(logits_AP - positive_A1)
        is_other_AP = torch.ones_like(terms_AP, dtype=torch.bool)
        is_other_AP[torch.arange(targets_A.numel(), device=targets_A.device), targets_A] = False
        return (terms_AP * is_other_AP).sum()
