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
"""

from __future__ import annotations

from torch import Tensor

from dml_dist.losses.base import MetricLoss
from dml_dist.losses.pairs import class_sizes, label_masks, masked_logsumexp, prepare, squared_distances


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

    def compute(self, emb_BD: Tensor, labels_B: Tensor, ref_ND: Tensor, ref_labels_N: Tensor, ref_start: int) -> Tensor:
        a_BD, r_ND = prepare(emb_BD, ref_ND, self.normalize)
        logits_BN = -self.scale * squared_distances(a_BD, r_ND, self.normalize)
        pos_BN, neg_BN = label_masks(labels_B, ref_labels_N, ref_start)
        has_pos_B = pos_BN.any(dim=1)
        log_p_B = masked_logsumexp(logits_BN, pos_BN) - masked_logsumexp(logits_BN, pos_BN | neg_BN)
        num_anchors = int((class_sizes(ref_labels_N, ref_labels_N) > 1).sum())
        return -(log_p_B * has_pos_B).sum() / max(num_anchors, 1)
