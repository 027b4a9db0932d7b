"""Contrastive loss (Hadsell, Chopra and LeCun, "Dimensionality Reduction by Learning an
Invariant Mapping", CVPR 2006).

For every ordered pair (i, j), i != j, of the global batch with Euclidean distance D_ij:

    positive (same label):  l_ij = 1/p * [D_ij - m_pos]_+^p
    negative:               l_ij = 1/p * [m_neg - D_ij]_+^p

The paper's form is p = 2, m_pos = 0, m_neg = m (its L = (1-Y) 1/2 D^2 + Y 1/2 [m - D]_+^2),
averaged over pairs (``reduction="mean"``). Defaults: p = 2, m_pos = 0, m_neg = 1 on
L2-normalized embeddings (distances in [0, 2]).

``reduction="nonzero"`` averages the positive terms over the non-zero positive terms and the
negative terms over the non-zero negative terms and adds the two: pytorch-metric-learning's
``ContrastiveLoss`` (AvgNonZeroReducer) with p = 1, which is the configuration the tests compare
against. Non-zero counts are global (computed on the whole reference set under no_grad).

Shapes: anchors [B, D], reference [N, D]; work B x N x D (+ N x N x D forward, no grad, for the
global non-zero counts of ``"nonzero"`` when B < N).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dml_dist.losses.base import MetricLoss
from dml_dist.losses.pairs import (
    euclidean_from_sq,
    factor,
    holds_all_anchors,
    label_masks,
    num_ordered_pairs,
    prepare,
    squared_distances,
)


class ContrastiveLoss(MetricLoss):
    """Hadsell et al. 2006 contrastive loss (see module docstring).

    Args:
        pos_margin: m_pos, positive pairs are penalized beyond it (paper: 0).
        neg_margin: m_neg, negative pairs are penalized within it (paper: m; default 1).
        power: p, 2 in the paper (squared hinge with the 1/2), 1 in pytorch-metric-learning.
        reduction: "mean" over all pairs (paper) or "nonzero" (pytorch-metric-learning).
        normalize: L2-normalize embeddings first (default True).
    """

    def __init__(
        self,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
        power: float = 2.0,
        reduction: str = "mean",
        normalize: bool = True,
    ):
        super().__init__()
        if reduction not in ("mean", "nonzero"):
            raise ValueError(f"loss.reduction: expected 'mean' or 'nonzero', got {reduction!r}")
        if power <= 0:
            raise ValueError(f"loss.power: expected > 0, got {power}")
        self.pos_margin, self.neg_margin, self.power = pos_margin, neg_margin, power
        self.reduction, self.normalize = reduction, normalize

    def _terms(self, dist_XN: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos_t = torch.relu(dist_XN - self.pos_margin) * factor(pos, dist_XN)
        neg_t = torch.relu(self.neg_margin - dist_XN) * factor(neg, dist_XN)
        if self.power == 1:
            return pos_t, neg_t
        return pos_t.pow(self.power) / self.power, neg_t.pow(self.power) / self.power

    def compute(
        self, emb_BD: Tensor, labels_B: Tensor, ref_ND: Tensor, ref_labels_N: Tensor, ref_start: int, num_anchors: int
    ) -> Tensor:
        a_BD, r_ND = prepare(emb_BD, ref_ND, self.normalize)
        pos_BN, neg_BN = label_masks(labels_B, ref_labels_N, ref_start)
        dist_BN = euclidean_from_sq(squared_distances(a_BD, r_ND, self.normalize))
        pos_t, neg_t = self._terms(dist_BN, pos_BN, neg_BN)
        if self.reduction == "mean":
            num_pos, num_neg = num_ordered_pairs(ref_labels_N, num_anchors)
            return (pos_t.sum() + neg_t.sum()) / max(num_pos + num_neg, 1)
        if holds_all_anchors(emb_BD, num_anchors):
            nnz_pos, nnz_neg = (pos_t > 0).sum(), (neg_t > 0).sum()
        else:
            with torch.no_grad():
                all_pos, all_neg = label_masks(ref_labels_N[:num_anchors], ref_labels_N, 0)
                all_dist = euclidean_from_sq(squared_distances(r_ND[:num_anchors], r_ND, self.normalize))
                p, n = self._terms(all_dist, all_pos, all_neg)
                nnz_pos, nnz_neg = (p > 0).sum(), (n > 0).sum()
        return pos_t.sum() / nnz_pos.clamp_min(1) + neg_t.sum() / nnz_neg.clamp_min(1)
