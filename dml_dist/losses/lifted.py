"""Lifted structured loss (Oh Song, Xiang, Jegelka and Savarese, "Deep Metric Learning via
Lifted Structured Feature Embedding", CVPR 2016, eq. (4)).

With Euclidean distances D and margin alpha, for each positive pair (i, j):

    J_ij = log( sum_{(i,k) in N} exp(alpha - D_ik) + sum_{(j,l) in N} exp(alpha - D_jl) ) + D_ij
    L = 1 / (2 |P|) sum_{(i,j) in P} [J_ij]_+^2

over unordered positive pairs; equivalently the mean over ordered pairs of [J_ij]_+^2 / 2, which
is how it is computed (each rank owns the ordered pairs of its anchors). Defaults: alpha = 1,
embeddings L2-normalized (pytorch-metric-learning's default distance; ``normalize=False`` gives
raw features). Tests compare with pytorch-metric-learning's ``LiftedStructureLoss``
(neg_margin = alpha, pos_margin = 0), which implements this equation.

Computation: the negative sums split per row, log(e^{LSE_i} + e^{LSE_j}) = logaddexp(LSE_i,
LSE_j), so only the rows of the local anchors and of their positives are needed: about
2 B x N x D for K = 2 images per class. With a cross-batch memory (``memory.py``) a positive j
may be a memory row; its negatives are then taken over all candidates too, so the memory term
costs (B + the anchors' distinct positives) x C x D: several times B x C x D, as a memory holds
several older rows of each anchor's class.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dml_dist.losses.base import MetricLoss
from dml_dist.losses.pairs import (
    euclidean_from_sq,
    is_whole,
    label_masks,
    masked_logsumexp,
    num_ordered_pairs,
    positive_index,
    prepare,
    squared_distances,
)


class LiftedStructureLoss(MetricLoss):
    """Oh Song et al. 2016 lifted structured loss (see module docstring).

    Args:
        margin: alpha (paper: 1).
        normalize: L2-normalize embeddings first (default True).
    """

    def __init__(self, margin: float = 1.0, normalize: bool = True):
        super().__init__()
        self.margin, self.normalize = margin, normalize

    def _neg_lse(self, x_XD: Tensor, labels_X: Tensor, r_ND: Tensor, ref_labels_N: Tensor) -> Tensor:
        dist_XN = euclidean_from_sq(squared_distances(x_XD, r_ND, self.normalize))
        return masked_logsumexp(self.margin - dist_XN, labels_X[:, None] != ref_labels_N[None, :])

    def compute(
        self, emb_BD: Tensor, labels_B: Tensor, ref_ND: Tensor, ref_labels_N: Tensor, ref_start: int, num_anchors: int
    ) -> Tensor:
        a_BD, r_ND = prepare(emb_BD, ref_ND, self.normalize)
        pos_BN, neg_BN = label_masks(labels_B, ref_labels_N, ref_start)
        dist_BN = euclidean_from_sq(squared_distances(a_BD, r_ND, self.normalize))
        lse_B = masked_logsumexp(self.margin - dist_BN, neg_BN)
        if is_whole(emb_BD, ref_ND):
            lse_N = lse_B
        else:
            # LSE of the positives' rows: only the rows that are a positive of a local anchor.
            rows = torch.nonzero(pos_BN.any(dim=0)).squeeze(1)
            lse_rows = self._neg_lse(r_ND[rows], ref_labels_N[rows], r_ND, ref_labels_N)
            lse_N = lse_B.new_zeros(ref_ND.shape[0]).index_put((rows,), lse_rows)
        index_BP, valid_BP = positive_index(labels_B, ref_labels_N, ref_start)
        j_BP = torch.logaddexp(lse_B[:, None], lse_N[index_BP]) + dist_BN.gather(1, index_BP)
        terms = (torch.relu(j_BP).pow(2) * valid_BP).sum() / 2
        return terms / max(num_ordered_pairs(ref_labels_N, num_anchors)[0], 1)
