"""Margin loss (Wu, Manmatha, Smola and Kraehenbuehl, "Sampling Matters in Deep Embedding
Learning", ICCV 2017), with a learnable boundary beta.

With Euclidean distances D of L2-normalized embeddings, y = +1 for positive and -1 for negative
pairs, margin alpha and boundary beta (eq. (4)):

    l(i, j) = [alpha + y_ij (D_ij - beta)]_+

The paper (and its reference code) evaluates it on triplets (a, p, n) from its sampler, a
positive and a negative term per triplet, normalized by the number of non-zero terms, plus
nu * beta (eq. (5)). Here all triplets of the batch are used (no distance-weighted sampling,
which belongs to a miner), as in pytorch-metric-learning's ``MarginLoss`` with
``triplets_per_anchor="all"`` (the tests' oracle):

    L = sum_a [ n_a sum_{p} l(a, p) + p_a sum_{n} l(a, n) ] / (number of non-zero terms) + nu beta

where p_a, n_a are a's numbers of positives and negatives; no N^3 tensor is built. The count
of non-zero terms is global (N x N x D without gradient when B < N).

Defaults (the paper's): alpha = 0.2, beta initialized to 1.2, nu = 0, beta learnable.
``num_classes`` gives one beta per class (beta^(class) of the paper; labels must be in
[0, num_classes)). When learnable, beta is an ``nn.Parameter`` of this module: the training loop
must pass the loss module's parameters to the optimizer (the paper uses a larger learning rate
for beta). Under all-gather the nu * beta term is added by the rank holding reference row 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dml_dist.losses.base import MetricLoss
from dml_dist.losses.pairs import euclidean_from_sq, factor, holds_all_anchors, label_masks, prepare, squared_distances


class MarginLoss(MetricLoss):
    """Wu et al. 2017 margin loss with learnable beta (see module docstring).

    Args:
        margin: alpha (0.2). beta: initial boundary (1.2). nu: beta regularization (0).
        learn_beta: make beta an ``nn.Parameter`` (True). num_classes: per-class beta if set.
    """

    def __init__(
        self,
        margin: float = 0.2,
        beta: float = 1.2,
        nu: float = 0.0,
        learn_beta: bool = True,
        num_classes: int | None = None,
    ):
        super().__init__()
        self.margin, self.nu = margin, nu
        init = torch.full((num_classes or 1,), float(beta))
        if learn_beta:
            self.beta = nn.Parameter(init)
        else:
            self.register_buffer("beta", init)
        self.per_class = num_classes is not None

    def _terms(self, dist: Tensor, pos: Tensor, neg: Tensor, beta_X1: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(weighted term sum, weighted non-zero count, triplets per row) of the rows."""
        pos_t = torch.relu(dist - (beta_X1 - self.margin)) * factor(pos, dist)
        neg_t = torch.relu((beta_X1 + self.margin) - dist) * factor(neg, dist)
        num_pos_X, num_neg_X = torch.count_nonzero(pos, dim=1), torch.count_nonzero(neg, dim=1)
        total = (num_neg_X * pos_t.sum(1) + num_pos_X * neg_t.sum(1)).sum()
        count = (num_neg_X * torch.count_nonzero(pos_t, dim=1) + num_pos_X * torch.count_nonzero(neg_t, dim=1)).sum()
        return total, count, num_pos_X * num_neg_X

    def _betas(self, labels_X: Tensor) -> Tensor:
        beta = self.beta.to(torch.float32) if self.beta.dtype in (torch.float16, torch.bfloat16) else self.beta
        return (beta[labels_X] if self.per_class else beta.expand(labels_X.shape[0]))[:, None]

    def compute(
        self, emb_BD: Tensor, labels_B: Tensor, ref_ND: Tensor, ref_labels_N: Tensor, ref_start: int, num_anchors: int
    ) -> Tensor:
        a_BD, r_ND = prepare(emb_BD, ref_ND, True)
        pos_BN, neg_BN = label_masks(labels_B, ref_labels_N, ref_start)
        dist_BN = euclidean_from_sq(squared_distances(a_BD, r_ND, True))
        beta_B1 = self._betas(labels_B).to(dist_BN.dtype)
        total, count, triplets_B = self._terms(dist_BN, pos_BN, neg_BN, beta_B1)
        if not holds_all_anchors(emb_BD, num_anchors):
            with torch.no_grad():
                anchor_labels = ref_labels_N[:num_anchors]
                all_pos, all_neg = label_masks(anchor_labels, ref_labels_N, 0)
                all_dist = euclidean_from_sq(squared_distances(r_ND[:num_anchors], r_ND, True))
                count = self._terms(all_dist, all_pos, all_neg, self._betas(anchor_labels).to(all_dist.dtype))[1]
        loss = total / count.clamp_min(1)
        if self.nu != 0:
            if self.per_class:
                loss = loss + self.nu * (triplets_B * beta_B1[:, 0]).sum() / count.clamp_min(1)
            elif ref_start == 0:
                loss = loss + self.nu * self.beta.sum()
        return loss
