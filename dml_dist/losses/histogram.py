"""Histogram loss (Ustinova and Lempitsky, "Learning Deep Embeddings with Histogram Loss",
NIPS 2016).

Cosine similarities of L2-normalized embeddings lie in [-1, 1], covered by R = n_bins + 1
nodes t_r = -1 + r Delta, Delta = 2 / n_bins. Each pair's similarity s is spread linearly over
its two neighbouring nodes; h+ and h- are the resulting densities of the positive and negative
pairs (unordered pairs i < j of the whole batch, each density normalized by its pair count):

    L = sum_r h-_r Phi+_r ,     Phi+_r = sum_{q <= r} h+_q

the probability that a random negative pair is more similar than a random positive one.
Default: n_bins = 100 (Delta = 0.02), pytorch-metric-learning's default. Tests compare with
pytorch-metric-learning's ``HistogramLoss`` on batches where every class has >= 2 rows (it only
uses pairs that belong to some triplet, which is then every pair).

Exact under all-gather. The densities depend on every pair, so each rank builds both histograms
from the whole reference set without gradient (N x N x D forward; skipped in one process). L is
bilinear in (h-, h+), so with Phi+ and Psi-_q = sum_{r >= q} h-_r held constant,

    share = sum_{local neg pairs} interp(Phi+, s) / n_neg + sum_{local pos pairs} interp(Psi-, s) / n_pos
            - (the positive part's value, detached)

has, summed over ranks, the value L and the gradient of L (each pair (i, j), i < j, is owned by
the rank of row i; its gradient reaches row j's rank through the autograd gather).

Computation: interp(T, s) is linear in s within a bin, with slope (T_{r+1} - T_r) / Delta, so
the share's gradient is that of sum_ij W_ij s_ij with W_ij the slope of the pair's bin (Phi+
for negatives / n_neg, Psi- for positives / n_pos), held constant. Bins, densities and W come
from whole-matrix passes with the masks as weights (no gathering of the pair lists), and the
autograd graph is one weighted sum of the similarities. Work B x N x D.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dml_dist.losses.base import MetricLoss
from dml_dist.losses.pairs import factor, holds_all_anchors, prepare, similarities


def _upper_masks(labels_B: Tensor, ref_labels_N: Tensor, row_start: int) -> tuple[Tensor, Tensor]:
    """(positive, negative) [B, N] masks of the pairs (i, j) with global j > i."""
    rows_B = torch.arange(labels_B.shape[0], device=labels_B.device) + row_start
    upper_BN = torch.arange(ref_labels_N.shape[0], device=labels_B.device)[None, :] > rows_B[:, None]
    same_BN = labels_B[:, None] == ref_labels_N[None, :]
    return same_BN & upper_BN, ~same_BN & upper_BN


class HistogramLoss(MetricLoss):
    """Ustinova and Lempitsky 2016 histogram loss (see module docstring).

    Args:
        n_bins: number of bins over [-1, 1] (n_bins + 1 nodes); default 100.
    """

    def __init__(self, n_bins: int = 100):
        super().__init__()
        if n_bins < 1:
            raise ValueError(f"loss.n_bins: expected >= 1, got {n_bins}")
        self.n_bins = n_bins
        self.delta = 2.0 / n_bins

    @torch.no_grad()
    def _bins(self, sim: Tensor) -> tuple[Tensor, Tensor]:
        """(left node index, weight of the right node) of each similarity."""
        x = (sim + 1) / self.delta
        left = x.floor().long().clamp_(0, self.n_bins - 1)
        return left, x - left

    @torch.no_grad()
    def _density(self, left: Tensor, right_w: Tensor, mask: Tensor, count: int) -> Tensor:
        """[n_bins + 1] density of the masked similarities, each spread over its two nodes."""
        mass = factor(mask, right_w)
        right_mass = right_w * mass
        density = right_w.new_zeros(self.n_bins + 1)
        density.scatter_add_(0, left.flatten(), (mass - right_mass).flatten())
        density.scatter_add_(0, left.flatten() + 1, right_mass.flatten())
        return density / count

    def compute(
        self, emb_BD: Tensor, labels_B: Tensor, ref_ND: Tensor, ref_labels_N: Tensor, ref_start: int, num_anchors: int
    ) -> Tensor:
        a_BD, r_ND = prepare(emb_BD, ref_ND, True)
        sim_BN = similarities(a_BD, r_ND).clamp(-1, 1)
        pos_BN, neg_BN = _upper_masks(labels_B, ref_labels_N, ref_start)
        whole = holds_all_anchors(emb_BD, num_anchors)
        with torch.no_grad():
            if whole:
                all_sim, all_pos, all_neg = sim_BN.detach(), pos_BN, neg_BN
            else:
                all_sim = (r_ND[:num_anchors] @ r_ND.T).clamp(-1, 1)
                all_pos, all_neg = _upper_masks(ref_labels_N[:num_anchors], ref_labels_N, 0)
            num_pos, num_neg = int(all_pos.sum()), int(all_neg.sum())
        if num_pos == 0 or num_neg == 0:
            return (sim_BN * 0.0).sum()
        with torch.no_grad():
            left, right_w = self._bins(all_sim)
            h_neg = self._density(left, right_w, all_neg, num_neg)
            phi_pos = torch.cumsum(self._density(left, right_w, all_pos, num_pos), 0)
            psi_neg = torch.flip(torch.cumsum(torch.flip(h_neg, [0]), 0), [0])
            if whole:
                value = (h_neg * phi_pos).sum()
            else:
                left, right_w = self._bins(sim_BN.detach())
                interp = phi_pos[left] + right_w * (phi_pos[left + 1] - phi_pos[left])
                value = (interp * neg_BN).sum() / num_neg
            neg_slope = (phi_pos[1:] - phi_pos[:-1]) / (self.delta * num_neg)
            pos_slope = (psi_neg[1:] - psi_neg[:-1]) / (self.delta * num_pos)
            weights_BN = neg_slope[left] * factor(neg_BN, sim_BN) + pos_slope[left] * factor(pos_BN, sim_BN)
        surrogate = (weights_BN * sim_BN).sum()
        return surrogate - surrogate.detach() + value  # the share's value, the gradient of L
