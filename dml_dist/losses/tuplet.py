"""(N+1)-tuplet loss (Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss
Objective", NIPS 2016, eq. (2)), over every tuplet a batch holds.

For an anchor f with a positive f^+ and negatives {f_k} the (N+1)-tuplet loss is

    l(f, f^+, {f_k}) = log(1 + sum_k exp(f^T f_k - f^T f^+))

Here every ordered positive pair (i, p), p != i, of the global batch is a tuplet whose
negatives are all rows of other classes; the loss averages over those pairs and adds Sohn's
L2 penalty on the norms of the tuplet's anchor and positive, lambda/4 (|f_i|^2 + |f_p|^2),
averaged the same way (so for K = 2 it is the N-pair penalty):

    L = 1/|P| sum_{(i,p) in P} [ log(1 + sum_{k: y_k != y_i} exp(s_ik - s_ip))
                                 + lambda/4 (|f_i|^2 + |f_p|^2) ]

Unlike N-pair-mc (one pair per class, negatives the other classes' positives), this uses all
rows. s = dot product of raw embeddings (paper); with ``temperature`` set, cosine / temperature.
Defaults: lambda = 0.002, no temperature. No pytorch-metric-learning counterpart: tested
against a direct loop over the formula.

Computation: log(1 + sum_k exp(s_ik - s_ip)) = softplus(LSE_k(s_ik) - s_ip), so one masked
log-sum-exp per anchor row. Work B x N x D. With a cross-batch memory (``memory.py``) the
positive f_p may be a memory row: its norm enters the penalty as a constant.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from dml_dist.losses.base import MetricLoss
from dml_dist.losses.npair import check_npair_params
from dml_dist.losses.pairs import (
    at_least_fp32,
    class_sizes,
    label_masks,
    masked_logsumexp,
    num_ordered_pairs,
    prepare,
    similarities,
)


class TupletLoss(MetricLoss):
    """(N+1)-tuplet loss over all positive pairs of the batch (see module docstring).

    Args:
        l2_reg: lambda of the norm penalty (paper: 0.002); 0 disables it.
        temperature: if set, similarities are cosine / temperature instead of dot products.
    """

    def __init__(self, l2_reg: float = 0.002, temperature: float | None = None):
        super().__init__()
        check_npair_params(l2_reg, temperature)
        self.l2_reg, self.temperature = l2_reg, temperature

    def compute(
        self, emb_BD: Tensor, labels_B: Tensor, ref_ND: Tensor, ref_labels_N: Tensor, ref_start: int, num_anchors: int
    ) -> Tensor:
        a_BD, r_ND = prepare(emb_BD, ref_ND, self.temperature is not None)
        sim_BN = similarities(a_BD, r_ND)
        if self.temperature is not None:
            sim_BN = sim_BN / self.temperature
        pos_BN, neg_BN = label_masks(labels_B, ref_labels_N, ref_start)
        neg_lse_B1 = masked_logsumexp(sim_BN, neg_BN)[:, None]
        terms = (F.softplus(neg_lse_B1 - sim_BN) * pos_BN).sum()
        num_pos = max(num_ordered_pairs(ref_labels_N, num_anchors)[0], 1)
        if self.l2_reg > 0:
            raw_BD = at_least_fp32(emb_BD)
            num_partners_B = class_sizes(labels_B, ref_labels_N) - 1
            anchor_norms = (num_partners_B * raw_BD.pow(2).sum(1)).sum()
            if num_anchors == ref_ND.shape[0]:
                # Each row is the anchor of (size - 1) pairs and the positive of as many.
                terms = terms + self.l2_reg / 4 * 2 * anchor_norms
            else:  # memory candidates are positives but never anchors: their norms one by one
                norms_N = at_least_fp32(ref_ND).pow(2).sum(1)
                positive_norms = (norms_N[None, :] * pos_BN).sum()
                terms = terms + self.l2_reg / 4 * (anchor_norms + positive_norms)
        return terms / num_pos
