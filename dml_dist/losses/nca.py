"""Neighbourhood components analysis loss (Goldberger, Roweis, Hinton and Salakhutdinov,
"Neighbourhood Components Analysis", NIPS 2004), in its log-likelihood form.

With squared Euclidean distances d_ij and a scale s, the probability that i picks j as its
neighbour is p_ij = exp(-s d_ij) / sum_{k != i} exp(-s d_ik); with C_i the other rows of i's
class, the loss is the negative log-likelihood of picking one of them (the paper's eq. (6)
objective sum_i log p_i), averaged over the anchors that have at least one such row:

    L = -1/|A| sum_{i in A} log sum_{j in C_i} p_ij

Defaults (the paper's): s = 1, raw embeddings (``normalize=False``). Tests compare with
pytorch-metric-learning's ``NCALoss`` (``LpDistance(power=2)``, normalized or not; it averages
over anchors whose probability is non-zero, the same set unless exp underflows, which the
log-sum-exp form here avoids). Work B x N x D.

Computation: -s d_ij = -s |f_i|^2 + 2 s f_i^T f_j - s |f_j|^2, and the first term is the same for
every j of row i, so it cancels between the two log-sum-exps of log p_i: the logits used are
2 s f_i^T f_j - s |f_j|^2, exactly equivalent and one N x N pass cheaper. The positives (K - 1
per anchor) are gathered by label, so only the normalizer runs over the whole B x N matrix.
"""

from __future__ import annotations

from torch import Tensor

from dml_dist.losses.base import MetricLoss
from dml_dist.losses.pairs import class_sizes, masked_logsumexp, positive_index, prepare, self_mask, similarities


class NCALoss(MetricLoss):
    """Goldberger et al. 2004 NCA loss (see module docstring).

    Args:
        scale: s, the softmax scale on squared distances (1).
        normalize: L2-normalize embeddings first (paper: no).
    """

    def __init__(self, scale: float = 1.0, normalize: bool = False):
        super().__init__()
        if scale <= 0:
            raise ValueError(f"loss.scale: expected > 0, got {scale}")
        self.scale, self.normalize = scale, normalize

    def compute(
        self, emb_BD: Tensor, labels_B: Tensor, ref_ND: Tensor, ref_labels_N: Tensor, ref_start: int, num_anchors: int
    ) -> Tensor:
        a_BD, r_ND = prepare(emb_BD, ref_ND, self.normalize)
        logits_BN = (2 * self.scale) * similarities(a_BD, r_ND)
        if not self.normalize:  # unit norms make |f_j|^2 a constant too
            logits_BN = logits_BN - self.scale * r_ND.pow(2).sum(dim=1)
        index_BP, pos_BP = positive_index(labels_B, ref_labels_N, ref_start)
        others_BN = ~self_mask(labels_B.shape[0], ref_labels_N.shape[0], ref_start, labels_B.device)
        has_pos_B = pos_BP.any(dim=1)
        log_p_B = masked_logsumexp(logits_BN.gather(1, index_BP), pos_BP) - masked_logsumexp(logits_BN, others_BN)
        num_with_pos = int((class_sizes(ref_labels_N[:num_anchors], ref_labels_N) > 1).sum())
        return -(log_p_B * has_pos_B).sum() / max(num_with_pos, 1)
