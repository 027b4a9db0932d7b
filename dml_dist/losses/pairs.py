"""Shared pieces of the pair-based losses: dtype handling, similarities, masks, global counts.

Every loss sees this rank's anchors ``emb_BD`` and the global candidates ``ref_ND``; the anchors
sit at rows ``ref_start : ref_start + B`` of the reference set. A pair (i, j) of the loss is an
anchor row i (local) and a candidate column j (global) with j != i; masks here exclude the self
pair by global index, so the same code serves one process (B = N, ref_start = 0) and W ranks.

Normalizers that depend on the whole batch (numbers of pairs, numbers of non-zero terms, top-K
thresholds, histograms) are computed from the reference set, which every rank holds: label-only
counts directly, value-dependent ones under ``torch.no_grad`` on the N x N similarity of the
reference set. When the anchors are all the global anchors (one process) the local values are
reused instead (``holds_all_anchors``), so a single process pays nothing extra. With a
cross-batch memory the global anchors are the first ``num_anchors`` reference rows and the
normalizers run over (anchor, candidate) pairs (``base.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Stand-in for log(0) in masked log-sum-exps: finite, so that rows with no valid entry keep
# finite gradients (exp(NEG - max) underflows to exactly 0 for valid rows).
NEG = -1e30

# Boolean-conditioned kernels (torch.where, masked_fill) run far slower on CPU than plain
# arithmetic (torch 2.13), so the N x N hot paths apply masks
# as 0/1 factors (``factor``) and as large additive offsets (``masked_max``, ``masked_min``).


def factor(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A bool mask as 0/1 values of ``like``'s dtype, for multiplying finite values."""
    return mask.to(like.dtype)


def neg_outside(x_BN: torch.Tensor, mask_BN: torch.Tensor) -> torch.Tensor:
    """x on the mask, about NEG (a finite minus infinity) outside it; x must be finite."""
    return x_BN + (factor(mask_BN, x_BN) - 1) * -NEG


def masked_max(x_BN: torch.Tensor, mask_BN: torch.Tensor) -> torch.Tensor:
    """[B, 1] row maximum over the mask; about NEG for a row with no valid entry."""
    return neg_outside(x_BN, mask_BN).amax(dim=1, keepdim=True)


def masked_min(x_BN: torch.Tensor, mask_BN: torch.Tensor) -> torch.Tensor:
    """[B, 1] row minimum over the mask; about -NEG for a row with no valid entry."""
    return -masked_max(-x_BN, mask_BN)


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32 (exp, sums and norms overflow or lose precision in half); fp64 stays."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def l2_normalize(x_ND: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm; zero rows stay zero, huge rows do not overflow the norm.

    Rows are first divided by their (detached) largest absolute entry: normalize(x / c) equals
    normalize(x) for any c > 0, so value and gradient are unchanged while |x|^2 cannot overflow.
    """
    scale = x_ND.detach().abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
    return F.normalize(x_ND / scale, dim=1, eps=1e-12)


def prepare(emb_BD: torch.Tensor, ref_ND: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(anchors, candidates) in fp32 or better, L2-normalized when asked."""
    if ref_ND is emb_BD:  # one process: one conversion and normalization, one graph
        emb_BD = ref_ND = l2_normalize(at_least_fp32(emb_BD)) if normalize else at_least_fp32(emb_BD)
        return emb_BD, ref_ND
    emb_BD, ref_ND = at_least_fp32(emb_BD), at_least_fp32(ref_ND)
    if normalize:
        return l2_normalize(emb_BD), l2_normalize(ref_ND)
    return emb_BD, ref_ND


def is_whole(emb_BD: torch.Tensor, ref_ND: torch.Tensor) -> bool:
    """True when the candidates are the local anchors themselves, the same tensor (one process),
    so values computed for the anchors serve the candidates too, gradients included. (A memory
    term's candidates can have as many rows as the anchors and still be other, detached rows.)"""
    return ref_ND is emb_BD


def self_mask(num_rows: int, num_cols: int, row_start: int, device: torch.device) -> torch.Tensor:
    """[B, N] bool, True at (i, row_start + i): the anchor paired with itself."""
    rows = torch.arange(num_rows, device=device)
    mask = torch.zeros(num_rows, num_cols, dtype=torch.bool, device=device)
    mask[rows, rows + row_start] = True
    return mask


def label_masks(
    labels_B: torch.Tensor, ref_labels_N: torch.Tensor, ref_start: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) [B, N] bool masks: same label but not self, different label."""
    same_BN = labels_B[:, None] == ref_labels_N[None, :]
    pos_BN = same_BN & ~self_mask(labels_B.shape[0], ref_labels_N.shape[0], ref_start, labels_B.device)
    return pos_BN, ~same_BN


def positive_index(
    labels_B: torch.Tensor, ref_labels_N: torch.Tensor, ref_start: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, P] column of each anchor's positives, [B, P] bool: a real positive), P = the largest
    class size in the reference set. Positives are sparse (K - 1 per anchor for K images per
    class), so losses gather their similarities (``sim_BN.gather(1, index)``) and work on B x P
    instead of masking the whole B x N matrix. Found from the sorted labels, in O(N log N);
    each row's positives come first, then invalid padding (P >= 1 even with no positives)."""
    order_N = torch.argsort(ref_labels_N, stable=True)
    classes, counts = torch.unique_consecutive(ref_labels_N[order_N], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    cls_B = torch.searchsorted(classes, labels_B).clamp_max(classes.numel() - 1)
    slots_P = torch.arange(int(counts.max()), device=labels_B.device)
    valid_BP = (slots_P[None, :] < counts[cls_B][:, None]) & (classes[cls_B] == labels_B)[:, None]
    index_BP = order_N[(starts[cls_B][:, None] + slots_P[None, :]).clamp_max(ref_labels_N.numel() - 1)]
    anchors_B1 = torch.arange(labels_B.numel(), device=labels_B.device)[:, None] + ref_start
    valid_BP &= index_BP != anchors_B1
    # The anchor's own slot moves to the end, where every row has one to spare: drop it.
    front_BP = torch.argsort((~valid_BP).to(torch.uint8), dim=1, stable=True)
    width = max(1, int(valid_BP.sum(dim=1).max())) if labels_B.numel() else 1
    return index_BP.gather(1, front_BP)[:, :width], valid_BP.gather(1, front_BP)[:, :width]


def class_sizes(labels_B: torch.Tensor, ref_labels_N: torch.Tensor) -> torch.Tensor:
    """[B] number of reference rows sharing each anchor's label (the anchor itself included)."""
    classes, inverse, counts = torch.unique(ref_labels_N, return_inverse=True, return_counts=True)
    index = torch.searchsorted(classes, labels_B)
    return counts[index.clamp_max(classes.numel() - 1)]


def num_ordered_pairs(ref_labels_N: torch.Tensor, num_anchors: int | None = None) -> tuple[int, int]:
    """(positive, negative) ordered pairs (i, j), i != j, i a global anchor (the first
    ``num_anchors`` rows, all by default) and j any reference row."""
    n = ref_labels_N.shape[0]
    a = n if num_anchors is None else num_anchors
    if a == n:
        counts = torch.unique(ref_labels_N, return_counts=True)[1]
        same = int((counts * counts).sum())
    else:  # sum over classes of (anchors of the class) x (reference rows of the class)
        same = int(class_sizes(ref_labels_N[:a], ref_labels_N).sum())
    return same - a, a * n - same


def holds_all_anchors(emb_BD: torch.Tensor, num_anchors: int) -> bool:
    """True when this rank's anchors are all the global anchors (one process): normalizers over
    the global anchors' pairs can then be read off the local values (``ref_anchors`` in ``base.py``)."""
    return emb_BD.shape[0] == num_anchors


# Exponents below this are clamped before exp: exp(-60) < 1e-26 is nothing next to the row's
# largest term (1), and CPU exp is 5 to 30 times slower on arguments whose result underflows
# (below about -87), which masked entries and far-away pairs of an N x N matrix mostly are.
# -60 rather than -80: the saved softmax of such entries, times a gradient scaled by a pair
# count (1e-4 and less), must stay above fp32's smallest normal number (1.2e-38); denormal
# gradients make the backward matmul several times slower on CPU (`dml-dist bench losses
# --memory-sizes 8192` times the memory term).
EXP_FLOOR = -60.0


class _MaskedLogSumExp(torch.autograd.Function):
    """Row-wise log sum_{mask} exp(x) whose backward is one product with the saved softmax."""

    @staticmethod
    def forward(ctx, x_BN: torch.Tensor, mask_BN: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        keep_BN = factor(mask_BN, x_BN)
        top_B1 = (x_BN + (keep_BN - 1).mul_(-NEG)).amax(dim=1, keepdim=True)
        weights_BN = (x_BN - top_B1).clamp_(EXP_FLOOR, 0.0).exp_().mul_(keep_BN)
        total_B1 = weights_BN.sum(dim=1, keepdim=True).clamp_min_(1e-30)
        ctx.save_for_backward(weights_BN.div_(total_B1))
        return (total_B1.log_() + top_B1).squeeze(1)

    @staticmethod
    def backward(ctx, grad_B: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (softmax_BN,) = ctx.saved_tensors
        return softmax_BN * grad_B[:, None], None


def masked_logsumexp(x_BN: torch.Tensor, mask_BN: torch.Tensor) -> torch.Tensor:
    """[B] log sum_{j: mask_ij} exp(x_ij); a row with no valid entry gives about NEG (log 0), finitely.

    Shifted by the row maximum over the mask, so every valid exponent lies in [EXP_FLOOR, 0];
    masked entries are clamped into that range too and then zeroed, so no exp overflows or
    underflows. The gradient is the masked row softmax (0 on masked entries and empty rows),
    saved by the forward pass, so backward costs one product instead of re-running the exps.
    """
    return _MaskedLogSumExp.apply(x_BN, mask_BN)


def euclidean_from_sq(sq_BN: torch.Tensor) -> torch.Tensor:
    """sqrt of squared distances with a finite gradient at 0 (pairs of identical rows)."""
    return sq_BN.clamp_min(1e-12).sqrt()


class _Gram(torch.autograd.Function):
    """x x^T with a one-matmul backward: d<G, x x^T> = (G + G^T) x."""

    @staticmethod
    def forward(ctx, x_ND: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x_ND)
        return x_ND @ x_ND.T

    @staticmethod
    def backward(ctx, grad_NN: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x_ND,) = ctx.saved_tensors
        return (grad_NN + grad_NN.T) @ x_ND


def similarities(a_BD: torch.Tensor, r_ND: torch.Tensor) -> torch.Tensor:
    """[B, N] dot products a r^T. In one process the anchors are the candidates (``prepare``
    returns one tensor), and the Gram matrix's backward takes one matmul instead of two: the
    loss then costs about 2/3 of the similarity floor's matmul time."""
    if a_BD is r_ND:
        return _Gram.apply(a_BD)
    return a_BD @ r_ND.T


def squared_distances(a_BD: torch.Tensor, r_ND: torch.Tensor, normalized: bool) -> torch.Tensor:
    """|a - r|^2 for all (anchor, candidate) pairs, via one matmul; >= 0."""
    sim_BN = similarities(a_BD, r_ND)
    if normalized:
        return (2 - 2 * sim_BN).clamp_min(0)
    return (a_BD.pow(2).sum(1, keepdim=True) + r_ND.pow(2).sum(1)[None, :] - 2 * sim_BN).clamp_min(0)
