"""Binomial deviance loss (Yi, Lei, Liao and Li, "Deep Metric Learning for Person
Re-Identification", ICPR 2014).

With cosine similarities s_ij of all ordered pairs i != j of the batch, m_ij = 1 for positive
and -c for negative pairs, and weights w_ij = 1/n_pos (positive) or 1/n_neg (negative):

    L = sum_{i,j} w_ij log(1 + exp(-alpha (s_ij - beta) m_ij))

Defaults (the paper's): alpha = 2, beta = 0.5, c = 25. n_pos, n_neg are the global numbers of
positive and negative pairs. No pytorch-metric-learning counterpart: tested against a direct
loop over the formula. Work B x N x D.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from dml_dist.losses.base import MetricLoss
from dml_dist.losses.pairs import label_masks, num_ordered_pairs, prepare, similarities


class BinomialDevianceLoss(MetricLoss):
    """Yi et al. 2014 binomial deviance (see module docstring).

    Args:
        alpha: scale (2). beta: similarity threshold (0.5). cost: c, the negative cost (25).
    """

    def __init__(self, alpha: float = 2.0, beta: float = 0.5, cost: float = 25.0):
        super().__init__()
        self.alpha, self.beta, self.cost = alpha, beta, cost

    def compute(
        self, emb_BD: Tensor, labels_B: Tensor, ref_ND: Tensor, ref_labels_N: Tensor, ref_start: int, num_anchors: int
    ) -> Tensor:
        a_BD, r_ND = prepare(emb_BD, ref_ND, True)
        sim_BN = similarities(a_BD, r_ND)
        pos_BN, neg_BN = label_masks(labels_B, ref_labels_N, ref_start)
        num_pos, num_neg = num_ordered_pairs(ref_labels_N, num_anchors)
        pos = (F.softplus(-self.alpha * (sim_BN - self.beta)) * pos_BN).sum() / max(num_pos, 1)
        neg = (F.softplus(self.alpha * self.cost * (sim_BN - self.beta)) * neg_BN).sum() / max(num_neg, 1)
        return pos + neg
