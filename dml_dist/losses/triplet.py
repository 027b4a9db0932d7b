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

No N^3 tensor: the hinge is linear in the distances on its active set, so

    sum_{active (a,p,n)} (d_ap - d_an + alpha) = sum_{a,p} c_ap d_ap - sum_{a,n} c_an d_an
                                                 + alpha * (number of active triplets)

with c_ap the number of active negatives of (a, p) and c_an the number of active positives of
(a, n). The counts are found without gradient from each anchor's positive distances
(``positive_index``: P = the largest number of positives, 1 for N-pair batches, 4 for 5 images
per class, more with a cross-batch memory): one positive slot at a time, a comparison of the
anchor's negative distances with d_ap + alpha (and d_ap, for semi-hard), work B x N x P; or,
for P > 8, by binary search in the sorted positive distances, work B x N x log P. Memory
B x N, and the autograd graph is one weighted sum of the distances.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dml_dist.losses.base import MetricLoss
from dml_dist.losses.pairs import holds_all_anchors, masked_max, masked_min, positive_index, prepare, squared_distances

MINING = ("all", "semihard", "hard")


# The slot loop costs P passes over the rows, the search a fixed handful (a sort, one or two
# binary searches and scatters): the loop is faster up to about 8 positives per anchor (N-pair
# and PK batches), the search beyond (a cross-batch memory holds many rows of a class; `dml-dist
# bench losses --memory-sizes 8192` times that case). Both give the same counts, bit for bit.
SEARCH_ABOVE_POSITIVES = 8


def _active_counts(
    dist_XN: Tensor, index_XP: Tensor, valid_XP: Tensor, neg_XN: Tensor, margin: float, semihard: bool
) -> tuple[Tensor, Tensor]:
    """([X, N] c_ap on positive entries, -c_an on negative ones, 0 elsewhere; active triplets)."""
    counts = _counts_by_search if index_XP.shape[1] > SEARCH_ABOVE_POSITIVES else _counts_by_slot
    return counts(dist_XN, index_XP, valid_XP, neg_XN, margin, semihard)


@torch.no_grad()
def _counts_by_slot(
    dist_XN: Tensor, index_XP: Tensor, valid_XP: Tensor, neg_XN: Tensor, margin: float, semihard: bool
) -> tuple[Tensor, Tensor]:
    """``_active_counts`` one positive slot at a time: P passes over the rows."""
    # Empty positive slots at -inf are never active.
    pos_XP = dist_XN.gather(1, index_XP).masked_fill_(~valid_XP, float("-inf"))
    pos_count_XP = torch.empty_like(pos_XP)
    neg_count_XN = torch.zeros_like(dist_XN)
    for slot in range(pos_XP.shape[1]):
        d_ap_X1 = pos_XP[:, slot : slot + 1]
        active_XN = (dist_XN < d_ap_X1 + margin) & neg_XN
        if semihard:
            active_XN &= dist_XN > d_ap_X1
        neg_count_XN += active_XN
        pos_count_XP[:, slot] = active_XN.sum(dim=1)
    weights_XN = torch.zeros_like(dist_XN).scatter_add_(1, index_XP, pos_count_XP * valid_XP)
    return weights_XN.sub_(neg_count_XN), neg_count_XN.sum()


@torch.no_grad()
def _counts_by_search(
    dist_XN: Tensor, index_XP: Tensor, valid_XP: Tensor, neg_XN: Tensor, margin: float, semihard: bool
) -> tuple[Tensor, Tensor]:
    """``_active_counts`` by binary search: each row's positive distances are sorted; (a, p, n) is active iff d_an < d_ap + alpha (and
    d_an > d_ap for semi-hard), so the active positives of a negative are a run of the sorted
    list, found by binary search: c_an is the run's length, and c_ap counts the negatives whose
    run holds p (a histogram of the run ends, summed up to p's place).
    """
    num_slots = index_XP.shape[1]
    # Empty positive slots at -inf sort first and are never active.
    sorted_XP, order_XP = dist_XN.gather(1, index_XP).masked_fill_(~valid_XP, float("-inf")).sort(dim=1)
    # Sorted positives [lo, hi) of each negative are active: lo = #{d_ap + alpha <= d_an}, hi = #{d_ap < d_an}.
    lo_XN = torch.searchsorted(sorted_XP + margin, dist_XN, right=True)
    neg_f = neg_XN.to(dist_XN.dtype)
    ends = torch.zeros(dist_XN.shape[0], num_slots + 1, dtype=dist_XN.dtype, device=dist_XN.device)
    ends.scatter_add_(1, lo_XN, neg_f)
    if semihard:
        hi_XN = torch.maximum(torch.searchsorted(sorted_XP, dist_XN), lo_XN)
        ends.scatter_add_(1, hi_XN, -neg_f)
        neg_count_XN = (hi_XN - lo_XN).to(dist_XN.dtype).mul_(neg_f)
    else:  # hi = P: every positive from lo on
        neg_count_XN = (num_slots - lo_XN).to(dist_XN.dtype).mul_(neg_f)
    sorted_count_XP = ends.cumsum_(1)[:, :num_slots]  # negatives whose run [lo, hi) holds sorted slot k
    pos_count_XP = torch.empty_like(sorted_count_XP).scatter_(1, order_XP, sorted_count_XP)
    weights_XN = torch.zeros_like(dist_XN).scatter_add_(1, index_XP, pos_count_XP * valid_XP)
    return weights_XN.sub_(neg_count_XN), neg_count_XN.sum()


def _triplet_sums(
    dist_XN: Tensor, index_XP: Tensor, valid_XP: Tensor, neg_XN: Tensor, margin: float, semihard: bool
) -> tuple[Tensor, Tensor]:
    """(sum of hinge terms, number of non-zero terms) over all (semi-hard) triplets of the rows."""
    weights_XN, count = _active_counts(dist_XN, index_XP, valid_XP, neg_XN, margin, semihard)
    return (weights_XN * dist_XN).sum() + margin * count, count


def _hard_terms(dist_XN: Tensor, index_XP: Tensor, valid_XP: Tensor, neg_XN: Tensor, margin: float) -> Tensor:
    """[X] batch-hard terms: farthest positive vs nearest negative; 0 where either is missing."""
    hardest_pos = masked_max(dist_XN.gather(1, index_XP), valid_XP)[:, 0]
    hardest_neg = masked_min(dist_XN, neg_XN)[:, 0]
    valid = valid_XP.any(dim=1) & (torch.count_nonzero(neg_XN, dim=1) > 0)
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

    def _sums(self, dist_XN: Tensor, labels_X: Tensor, ref_labels_N: Tensor, row_start: int) -> tuple[Tensor, Tensor]:
        """(sum of the hinge terms, number of non-zero terms) of rows X against all candidates."""
        index_XP, valid_XP = positive_index(labels_X, ref_labels_N, row_start)
        neg_XN = labels_X[:, None] != ref_labels_N[None, :]
        if self.mining == "hard":
            terms = _hard_terms(dist_XN, index_XP, valid_XP, neg_XN, self.margin)
            return terms.sum(), (terms > 0).sum()
        return _triplet_sums(dist_XN, index_XP, valid_XP, neg_XN, self.margin, self.mining == "semihard")

    def compute(
        self, emb_BD: Tensor, labels_B: Tensor, ref_ND: Tensor, ref_labels_N: Tensor, ref_start: int, num_anchors: int
    ) -> Tensor:
        a_BD, r_ND = prepare(emb_BD, ref_ND, self.normalize)
        total, count = self._sums(self._distances(a_BD, r_ND), labels_B, ref_labels_N, ref_start)
        if not holds_all_anchors(emb_BD, num_anchors):
            with torch.no_grad():
                anchors_AD, anchor_labels = r_ND[:num_anchors], ref_labels_N[:num_anchors]
                count = self._sums(self._distances(anchors_AD, r_ND), anchor_labels, ref_labels_N, 0)[1]
        return total / count.clamp_min(1)
