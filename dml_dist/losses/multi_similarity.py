"""Multi-similarity loss with its pair mining (Wang, Han, Huang, Dong and Scott,
"Multi-Similarity Loss with General Pair Weighting for Deep Metric Learning", CVPR 2019).

Cosine similarities S of L2-normalized embeddings. Mining (paper eqs. (10)-(11)): for anchor i,

    negative pair (i, j) kept  if  S_ij + eps > min_{y_k = y_i, k != i} S_ik
    positive pair (i, j) kept  if  S_ij - eps < max_{y_k != y_i} S_ik

and over the kept sets P_i, N_i (paper eq. (12)), with m anchors in the batch:

    L = 1/m sum_i [ 1/alpha log(1 + sum_{k in P_i} exp(-alpha (S_ik - lambda)))
                  + 1/beta  log(1 + sum_{k in N_i} exp( beta  (S_ik - lambda))) ]

Defaults (the paper's): alpha = 2, beta = 50, lambda (``base``) = 0.5, eps = 0.1. An anchor
whose kept positive (or negative) set is empty keeps its other term, as in the equation and in
pytorch-metric-learning's ``MultiSimilarityLoss`` + ``MultiSimilarityMiner`` (the tests' oracle);
the official code (MalongTech/research-ms-loss) skips such anchors: ``skip_one_sided=True``
reproduces that (its configs also use beta = 40 rather than 50). m is the global batch size.

Computation: mining is a per-row min/max, the loss two masked log-sum-exps per row: B x N x D.
The positives (K - 1 per anchor) are gathered by label into B x (K - 1) slots
(``positive_index``), so only the negative side touches the whole B x N matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dml_dist.losses.base import MetricLoss
from dml_dist.losses.pairs import masked_logsumexp, masked_max, masked_min, positive_index, prepare, similarities


class MultiSimilarityLoss(MetricLoss):
    """Wang et al. 2019 multi-similarity loss with MS pair mining (see module docstring).

    Args:
        alpha: positive scale (2). beta: negative scale (50). base: lambda (0.5).
        epsilon: mining margin (0.1); ``mining=False`` uses all pairs.
        skip_one_sided: drop anchors with an empty mined positive or negative set (official code).
    """

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 50.0,
        base: float = 0.5,
        epsilon: float = 0.1,
        mining: bool = True,
        skip_one_sided: bool = False,
    ):
        super().__init__()
        if alpha <= 0 or beta <= 0:
            raise ValueError(f"loss.alpha/beta: expected > 0, got {alpha}, {beta}")
        self.alpha, self.beta, self.base, self.epsilon = alpha, beta, base, epsilon
        self.mining, self.skip_one_sided = mining, skip_one_sided

    def compute(
        self, emb_BD: Tensor, labels_B: Tensor, ref_ND: Tensor, ref_labels_N: Tensor, ref_start: int, num_anchors: int
    ) -> Tensor:
        a_BD, r_ND = prepare(emb_BD, ref_ND, True)
        sim_BN = similarities(a_BD, r_ND)
        index_BP, pos_BP = positive_index(labels_B, ref_labels_N, ref_start)
        pos_sim_BP = sim_BN.gather(1, index_BP)
        neg_BN = labels_B[:, None] != ref_labels_N[None, :]
        if self.mining:
            with torch.no_grad():
                pos_sim, sim = pos_sim_BP.detach(), sim_BN.detach()
                min_pos_B1, max_neg_B1 = masked_min(pos_sim, pos_BP), masked_max(sim, neg_BN)
                pos_BP = pos_BP & (pos_sim - self.epsilon < max_neg_B1)
                neg_BN = neg_BN & (sim + self.epsilon > min_pos_B1)
        pos_term_B = F.softplus(masked_logsumexp(-self.alpha * (pos_sim_BP - self.base), pos_BP)) / self.alpha
        neg_term_B = F.softplus(masked_logsumexp(self.beta * (sim_BN - self.base), neg_BN)) / self.beta
        terms_B = pos_term_B + neg_term_B
        if self.skip_one_sided:
            terms_B = terms_B * (pos_BP.any(dim=1) & (torch.count_nonzero(neg_BN, dim=1) > 0))
        return terms_B.sum() / num_anchors
