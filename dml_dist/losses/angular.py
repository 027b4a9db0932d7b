"""Angular loss (Wang, Zhou, Wen, Liu and Lin, "Deep Metric Learning with Angular Loss",
ICCV 2017), alone or combined with N-pair-mc as in that paper.

With L2-normalized embeddings x and an angle bound alpha, for each ordered positive pair (a, p)
of the batch and the negatives n of a's class (the paper's N-pair batch form, eq. (8)):

    f_apn = 4 tan^2(alpha) (x_a + x_p)^T x_n - 2 (1 + tan^2(alpha)) x_a^T x_p
    L_ang = 1/|P| sum_{(a,p) in P} log(1 + sum_n exp(f_apn))

and the paper's combination L = L_npair + lambda L_ang (``with_npair=True``), with N-pair-mc
on the same embeddings (``npair.py``, Sohn's L2 penalty ``l2_reg``). Defaults: alpha = 40
degrees (inside the 36-55 degree range the paper studies; pytorch-metric-learning's default),
lambda = 2, ``with_npair=False``. Tests compare L_ang with pytorch-metric-learning's
``AngularLoss`` (same form: all positive pairs, mean over them), fed L2-normalized input:
PML normalizes x_a and x_p but uses the negatives x_n as given, unlike the paper.

Computation: one product of the pairs' sums (x_a + x_p) with the candidates, Q x N x D for Q
positive pairs (Q = B for K = 2 per class), the floor's work. With N-pair, the N-pair part needs
its own product of the raw (unnormalized) embeddings, so that combination costs two similarity
matrices: about twice the floor by construction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dml_dist.losses.base import MetricLoss
from dml_dist.losses.npair import NPairMCLoss
from dml_dist.losses.pairs import label_masks, masked_logsumexp, num_ordered_pairs, prepare


class AngularLoss(MetricLoss):
    """Wang et al. 2017 angular loss, optionally + N-pair-mc (see module docstring).

    Args:
        alpha: the angle bound in degrees (default 40).
        with_npair: add N-pair-mc, L = L_npair + angular_weight * L_ang (paper's combination).
        angular_weight: lambda of the combination (paper: 2).
        l2_reg: Sohn's norm penalty of the N-pair part (0.002).
    """

    def __init__(
        self, alpha: float = 40.0, with_npair: bool = False, angular_weight: float = 2.0, l2_reg: float = 0.002
    ):
        super().__init__()
        if not 0 < alpha < 90:
            raise ValueError(f"loss.alpha: expected an angle in (0, 90) degrees, got {alpha}")
        self.alpha, self.with_npair, self.angular_weight = alpha, with_npair, angular_weight
        self.sq_tan = math.tan(math.radians(alpha)) ** 2
        self.npair = NPairMCLoss(l2_reg=l2_reg) if with_npair else None
        self.takes_memory = not with_npair
        self.memory_refusal = "with_npair adds N-pair-mc, which takes no memory; set loss.with_npair: false"

    def compute(
        self, emb_BD: Tensor, labels_B: Tensor, ref_ND: Tensor, ref_labels_N: Tensor, ref_start: int, num_anchors: int
    ) -> Tensor:
        a_BD, r_ND = prepare(emb_BD, ref_ND, True)
        pos_BN, neg_BN = label_masks(labels_B, ref_labels_N, ref_start)
        anchor_B, positive_N = torch.nonzero(pos_BN, as_tuple=True)  # pairs (anchor, positive), [Q]
        loss = a_BD.sum() * 0.0
        if anchor_B.numel() > 0:
            a_QD, p_QD = a_BD.index_select(0, anchor_B), r_ND.index_select(0, positive_N)
            f_QN = 4 * self.sq_tan * ((a_QD + p_QD) @ r_ND.T) - 2 * (1 + self.sq_tan) * (a_QD * p_QD).sum(
                1, keepdim=True
            )
            terms = F.softplus(masked_logsumexp(f_QN, neg_BN[anchor_B]))
            loss = terms.sum() / max(num_ordered_pairs(ref_labels_N, num_anchors)[0], 1)
        if self.npair is not None:
            npair = self.npair.compute(emb_BD, labels_B, ref_ND, ref_labels_N, ref_start, num_anchors)
            return npair + self.angular_weight * loss
        return loss
