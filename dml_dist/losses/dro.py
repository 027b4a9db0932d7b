"""Distributionally robust pair losses (Qi, Yan, Wang and Yang, "A Simple and Effective
Framework for Pairwise Deep Metric Learning", ECCV 2020).

The batch is a set of pairs, every ordered pair (i, j), i != j, with a pair loss l_ij of its
cosine similarity s_ij. The robust loss is max_{p in U} sum_ij p_ij l_ij over an uncertainty set
U of pair weights; its solutions give:

- ``dro_topk``:    U = {p : 0 <= p_ij <= 1/K, sum p = 1}  ->  L = 1/K (sum of the K largest l_ij)
- ``dro_topk_pn``: the same, separately for positive and negative pairs:
                   L = (sum of the K_pos largest positive + the K_neg largest negative l_ij)
                       / (K_pos + K_neg)
- ``dro_kl``:      U = simplex with a KL penalty gamma KL(p, uniform); the maximizer in closed
                   form is p_ij = exp(l_ij / gamma) / sum_kl exp(l_kl / gamma), and
                   L = sum_ij p_ij l_ij with p held constant (its gradient is that of the
                   robust objective, Danskin's theorem).

Pair losses (``pair_loss``), with threshold lambda and margin delta (the paper's code):
  "margin" (default):  pos [delta + lambda - s]_+ ,            neg [delta + s - lambda]_+
  "binomial":          pos 2/a_p log(1 + exp(-a_p (s - lambda))), neg 2/a_n log(1 + exp(a_n (s - lambda)))
  "contrastive":       pos 1 - s ,                              neg [s - lambda]_+
Defaults: lambda = 0.5, delta = 0.2 (the paper's run scripts), a_p = 2, a_n = 40; K = 320 pairs
for TopK (their 4 K with K = 80 at batch size 80), K_pos = K_neg = 160; gamma = 0.1. When the
batch has fewer pairs than K, all of them are used (a mean), as in the reference code; TopK-PN
clamps each side to its available pairs. Ties at the K-th value share the remaining weight
equally, which keeps the result independent of the number of ranks. No pytorch-metric-learning
counterpart: tested against a loop over the pairs.

Exact under all-gather: the K-th largest value and the KL normalizer are global, computed from
all pairs of the reference set without gradient (N x N x D forward; skipped in one process);
each rank then sums the selected or weighted terms of its own anchors' pairs. Work B x N x D.

Speed: the loss is one N x N pass over the pairs plus, for the top-K forms, a top-k selection
over all N^2 pair losses (single-threaded in torch). TopK-PN needs two selections, one per side;
``dml-dist bench losses`` gives each form's time against the similarity floor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dml_dist.losses.base import MetricLoss
from dml_dist.losses.pairs import (
    EXP_FLOOR,
    factor,
    holds_all_anchors,
    label_masks,
    masked_logsumexp,
    neg_outside,
    prepare,
    similarities,
)

PAIR_LOSSES = ("margin", "binomial", "contrastive")


class _DROBase(MetricLoss):
    """Pair losses of the DRO framework; subclasses weight them."""

    def __init__(
        self,
        pair_loss: str = "margin",
        threshold: float = 0.5,
        margin: float = 0.2,
        pos_scale: float = 2.0,
        neg_scale: float = 40.0,
    ):
        super().__init__()
        if pair_loss not in PAIR_LOSSES:
            raise ValueError(f"loss.pair_loss: expected one of {', '.join(PAIR_LOSSES)}, got {pair_loss!r}")
        self.pair_loss, self.threshold, self.margin = pair_loss, threshold, margin
        self.pos_scale, self.neg_scale = pos_scale, neg_scale

    def pair_losses(self, sim: Tensor, is_pos: Tensor) -> Tensor:
        """l_ij for every entry of ``sim`` (positive where ``is_pos``, negative elsewhere)."""
        lam = self.threshold
        if self.pair_loss == "margin":
            pos, neg = torch.relu(self.margin + lam - sim), torch.relu(self.margin + sim - lam)
        elif self.pair_loss == "binomial":
            pos = 2 / self.pos_scale * F.softplus(-self.pos_scale * (sim - lam))
            neg = 2 / self.neg_scale * F.softplus(self.neg_scale * (sim - lam))
        else:
            pos, neg = 1 - sim, torch.relu(sim - lam)
        is_pos_f = factor(is_pos, sim)
        return pos * is_pos_f + neg * (1 - is_pos_f)

    def compute(
        self, emb_BD: Tensor, labels_B: Tensor, ref_ND: Tensor, ref_labels_N: Tensor, ref_start: int, num_anchors: int
    ) -> Tensor:
        a_BD, r_ND = prepare(emb_BD, ref_ND, True)
        pos_BN, neg_BN = label_masks(labels_B, ref_labels_N, ref_start)
        loss_BN = self.pair_losses(similarities(a_BD, r_ND), pos_BN)
        with torch.no_grad():
            if holds_all_anchors(emb_BD, num_anchors):
                all_loss, all_pos, all_neg = loss_BN.detach(), pos_BN, neg_BN
            else:
                all_pos, all_neg = label_masks(ref_labels_N[:num_anchors], ref_labels_N, 0)
                all_loss = self.pair_losses(r_ND[:num_anchors] @ r_ND.T, all_pos)
        return self.weighted_sum(loss_BN, pos_BN, neg_BN, all_loss, all_pos, all_neg)

    def weighted_sum(
        self, loss_BN: Tensor, pos_BN: Tensor, neg_BN: Tensor, all_loss: Tensor, all_pos: Tensor, all_neg: Tensor
    ) -> Tensor:
        raise NotImplementedError


@torch.no_grad()
def _top_k_weights(loss_BN: Tensor, mask_BN: Tensor, all_loss: Tensor, all_mask: Tensor, k: int) -> tuple[Tensor, int]:
    """([B, N] weight of each local term, the k used): 1 for the terms above the global k-th
    largest of ``all_loss[all_mask]``, an equal share of the remaining slots for the terms tied
    with it, 0 otherwise and outside ``mask_BN``."""
    k = min(k, int(all_mask.sum()))
    if k == 0:
        return torch.zeros_like(loss_BN), 0
    candidates = neg_outside(all_loss, all_mask)
    kth = candidates.flatten().topk(k).values[-1]
    above, tied = candidates > kth, candidates == kth
    tie_weight = (k - int(torch.count_nonzero(above))) / int(torch.count_nonzero(tied))
    if loss_BN.shape != all_loss.shape:  # a share of the batch: classify the local terms
        local = neg_outside(loss_BN, mask_BN)
        above, tied = local > kth, local == kth
    return factor(above, loss_BN).add_(factor(tied, loss_BN), alpha=tie_weight), k


class DROTopKLoss(_DROBase):
    """DRO-TopK: mean of the K largest pair losses of the batch (see module docstring).

    Args: k (320), and the pair loss: pair_loss ("margin"), threshold (0.5), margin (0.2),
    pos_scale (2), neg_scale (40).
    """

    def __init__(self, k: int = 320, pair_loss: str = "margin", threshold: float = 0.5, margin: float = 0.2,
                 pos_scale: float = 2.0, neg_scale: float = 40.0):  # fmt: skip
        super().__init__(pair_loss, threshold, margin, pos_scale, neg_scale)
        if k < 1:
            raise ValueError(f"loss.k: expected >= 1, got {k}")
        self.k = k

    def weighted_sum(self, loss_BN, pos_BN, neg_BN, all_loss, all_pos, all_neg):  # type: ignore[no-untyped-def]
        weights, k = _top_k_weights(loss_BN, pos_BN | neg_BN, all_loss, all_pos | all_neg, self.k)
        return (weights * loss_BN).sum() / max(k, 1)


class DROTopKPNLoss(_DROBase):
    """DRO-TopK-PN: the K_pos largest positive and K_neg largest negative pair losses.

    Args: k_pos (160), k_neg (160), and the pair loss as ``DROTopKLoss``.
    """

    def __init__(self, k_pos: int = 160, k_neg: int = 160, pair_loss: str = "margin", threshold: float = 0.5,
                 margin: float = 0.2, pos_scale: float = 2.0, neg_scale: float = 40.0):  # fmt: skip
        super().__init__(pair_loss, threshold, margin, pos_scale, neg_scale)
        if k_pos < 1 or k_neg < 1:
            raise ValueError(f"loss.k_pos/k_neg: expected >= 1, got {k_pos}, {k_neg}")
        self.k_pos, self.k_neg = k_pos, k_neg

    def weighted_sum(self, loss_BN, pos_BN, neg_BN, all_loss, all_pos, all_neg):  # type: ignore[no-untyped-def]
        pos_weights, k_pos = _top_k_weights(loss_BN, pos_BN, all_loss, all_pos, self.k_pos)
        neg_weights, k_neg = _top_k_weights(loss_BN, neg_BN, all_loss, all_neg, self.k_neg)
        return ((pos_weights + neg_weights) * loss_BN).sum() / max(k_pos + k_neg, 1)


class DROKLLoss(_DROBase):
    """DRO-KL: pair losses weighted by p = softmax(l / gamma) over all pairs, p held constant.

    Args: gamma (0.1), and the pair loss as ``DROTopKLoss``.
    """

    def __init__(self, gamma: float = 0.1, pair_loss: str = "margin", threshold: float = 0.5, margin: float = 0.2,
                 pos_scale: float = 2.0, neg_scale: float = 40.0):  # fmt: skip
        super().__init__(pair_loss, threshold, margin, pos_scale, neg_scale)
        if gamma <= 0:
            raise ValueError(f"loss.gamma: expected > 0, got {gamma}")
        self.gamma = gamma

    def weighted_sum(self, loss_BN, pos_BN, neg_BN, all_loss, all_pos, all_neg):  # type: ignore[no-untyped-def]
        all_mask = all_pos | all_neg
        if not all_mask.any():
            return loss_BN.sum() * 0.0
        with torch.no_grad():
            log_z = masked_logsumexp(all_loss.reshape(1, -1) / self.gamma, all_mask.reshape(1, -1))
            weights = (
                (loss_BN / self.gamma - log_z).clamp_(EXP_FLOOR, 0.0).exp_().mul_(factor(pos_BN | neg_BN, loss_BN))
            )
        return (weights * loss_BN).sum()
