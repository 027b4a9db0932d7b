"""Triplet loss (Schroff, Kalenichenko and Philbin, "FaceNet: A Unified Embedding for Face
Recognition and Clustering", CVPR 2015), with all, semi-hard and hard triplets of the batch.

For a triplet (a, p, n), p of a's class and n of another, with squared Euclidean distances of
L2-normalized embeddings d = |f_a - f_.|^2 (FaceNet's form)

    l_apn = [d_ap - d_an + alpha]_+ ,       alpha = 0.2 (FaceNet's margin)

averaged over the triplets with a non-zero term (the global count over the whole batch):

- ``mining="all"``: every triplet of the batch;
- ``mining="semihard"``: triplets with d_ap < d_an < d_ap + alpha (FaceNet's semi-hard
  negatives; all of them, as pytorch-metric-learning's ``TripletMarginMiner("semihard")``,
  rather than one random negative per positive as in FaceNet);
- ``mining="hard"``: per anchor its farthest positive and nearest negative ("batch hard",
  Hermans, Beyer and Leibe, "In Defense of the Triplet Loss", 2017).

Default: ``mining="all"``. Tests compare against pytorch-metric-learning's ``TripletMarginLoss``
(``LpDistance(power=2)``, with ``TripletMarginMiner`` / ``BatchHardMiner``).

No N^3 tensor: for an anchor with positive distance d_p and sorted negative distances, the
triplets with non-zero loss are the negatives below d_p + alpha (above d_p too, for semi-hard),
found by ``searchsorted``; their sum is count * (d_p + alpha) - (a prefix sum of the sorted
negatives). Work and memory B x N (+ sorting), and N x N without gradient for the global count
of non-zero triplets when B < N.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dml_dist.losses.base import MetricLoss
from dml_dist.losses.pairs import is_whole, label_masks, prepare, squared_distances, zero_loss

MINING = ("all", "semihard", "hard")


def _triplet_sums(
    dist_XN: Tensor, pos_XN: Tensor, neg_XN: Tensor, margin: float, semihard: bool
) -> tuple[Tensor, Tensor]:
    """(sum of hinge terms, number of non-zero terms) over all (semi-hard) triplets of the rows."""
    inf = torch.finfo(dist_XN.dtype).max
    neg_sorted_XN = dist_XN.masked_fill(~neg_XN, inf).sort(dim=1).values
    is_neg_sorted = neg_sorted_XN < inf
    prefix_XN1 = torch.nn.functional.pad(torch.cumsum(neg_sorted_XN * is_neg_sorted, dim=1), (1, 0))
    keys_XN = neg_sorted_XN.detach().contiguous()
    upper_XN = dist_XN + margin
    hi_XN = torch.searchsorted(keys_XN, upper_XN.detach().contiguous(), side="left")
    if semihard:
        lo_XN = torch.searchsorted(keys_XN, dist_XN.detach().contiguous(), side="right")
    else:
        lo_XN = torch.zeros_like(hi_XN)
    count_XN = (hi_XN - lo_XN).clamp_min(0) * pos_XN
    hi_XN, lo_XN = torch.maximum(hi_XN, lo_XN), lo_XN
    span_XN = prefix_XN1.gather(1, hi_XN) - prefix_XN1.gather(1, lo_XN)
    terms_XN = (count_XN * upper_XN - span_XN * (count_XN > 0)) * pos_XN
    return terms_XN.sum(), count_XN.sum()


def _hard_terms(dist_XN: Tensor, pos_XN: Tensor, neg_XN: Tensor, margin: float) -> Tensor:
    """[X] batch-hard terms: farthest positive vs nearest negative; 0 where either is missing."""
    hardest_pos = dist_XN.masked_fill(~pos_XN, -1.0).amax(dim=1)
    hardest_neg = dist_XN.masked_fill(~neg_XN, torch.finfo(dist_XN.dtype).max).amin(dim=1)
    valid = pos_XN.any(dim=1) & neg_XN.any(dim=1)
    return torch.where(valid, torch.relu(hardest_pos - hardest_neg.masked_fill(~valid, 0) + margin), 0.0)


class TripletLoss(MetricLoss):
    """FaceNet triplet loss over the batch's triplets (see module docstring).

    Args:
        margin: alpha (FaceNet: 0.2).
        mining: "all", "semihard" or "hard" (batch hard).
        squared: squared Euclidean distance (FaceNet) or plain Euclidean.
        normalize: L2-normalize embeddings first (FaceNet: yes).
    """

    def __init__(self, margin: float = 0.2, mining: str = "all", squared: bool = True, normalize: bool = True):
        super().__init__()
        if mining not in MINING:
            raise ValueError(f"loss.mining: expected one of {', '.join(MINING)}, got {mining!r}")
        self.margin, self.mining, self.squared, self.normalize = margin, mining, squared, normalize

    def _distances(self, a: Tensor, r: Tensor) -> Tensor:
        sq = squared_distances(a, r, self.normalize)
        return sq if self.squared else sq.clamp_min(1e-12).sqrt()

    def _sums(self, dist: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
        if self.mining == "hard":
            terms = _hard_terms(dist, pos, neg, self.margin)
            return terms.sum(), (terms > 0).sum()
        return _triplet_sums(dist, pos, neg, self.margin, self.mining == "semihard")

    def compute(self, emb_BD: Tensor, labels_B: Tensor, ref_ND: Tensor, ref_labels_N: Tensor, ref_start: int) -> Tensor:
        a_BD, r_ND = prepare(emb_BD, ref_ND, self.normalize)
        pos_BN, neg_BN = label_masks(labels_B, ref_labels_N, ref_start)
        if not pos_BN.any() and is_whole(emb_BD, ref_ND):
            return zero_loss(emb_BD)
        total, count = self._sums(self._distances(a_BD, r_ND), pos_BN, neg_BN)
        if not is_whole(emb_BD, ref_ND):
            with torch.no_grad():
                all_pos, all_neg = label_masks(ref_labels_N, ref_labels_N, 0)
                count = self._sums(self._distances(r_ND, r_ND), all_pos, all_neg)[1]
        return total / count.clamp_min(1)
