"""N-pair-mc against pytorch-metric-learning and a direct loop over Sohn's formula."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml
from pytorch_metric_learning.distances import DotProductSimilarity

from dml_dist.losses import build_loss


def _pair_batch(num_classes: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(2)
    perm = torch.randperm(labels.numel(), generator=gen)
    return torch.randn(labels.numel(), dim, generator=gen, dtype=torch.float64), labels[perm]


def _sohn_loop(emb: torch.Tensor, labels: torch.Tensor, l2_reg: float, temperature: float | None) -> torch.Tensor:
    """Sohn 2016 eq. (3) + the L2 penalty, one anchor at a time."""
    classes = sorted({int(y) for y in labels})
    rows = {c: [i for i in range(len(labels)) if int(labels[i]) == c] for c in classes}
    anchors = [emb[rows[c][0]] for c in classes]
    positives = [emb[rows[c][1]] for c in classes]

    def sim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if temperature is None:
            return a @ b
        return (a / a.norm()) @ (b / b.norm()) / temperature

    total = emb.new_zeros(())
    for i in range(len(classes)):
        inner = sum(
            torch.exp(sim(anchors[i], positives[j]) - sim(anchors[i], positives[i]))
            for j in range(len(classes))
            if j != i
        )
        total = total + torch.log(1 + inner)
    reg = sum(a @ a for a in anchors) / len(classes) + sum(p @ p for p in positives) / len(classes)
    return total / len(classes) + l2_reg / 4 * reg


def test_matches_pytorch_metric_learning_value_and_gradient() -> None:
    emb, labels = _pair_batch(64, 32)
    ours_in = emb.clone().requires_grad_(True)
    ref_in = emb.clone().requires_grad_(True)
    ours = build_loss("npair_mc", l2_reg=0.0)(ours_in, labels)
    # PML normalizes embeddings by default; Sohn's loss (and ours) uses the raw dot product.
    ref = pml.NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False))(ref_in, labels)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(ours_in.grad, ref_in.grad)


@pytest.mark.parametrize("temperature", [None, 0.1])
def test_matches_direct_loop_over_the_formula(temperature: float | None) -> None:
    emb, labels = _pair_batch(12, 8, seed=1)
    ours = build_loss("npair_mc", l2_reg=0.002, temperature=temperature)(emb, labels)
    torch.testing.assert_close(ours, _sohn_loop(emb, labels, 0.002, temperature))


def test_local_shares_sum_to_the_global_loss() -> None:
    emb, labels = _pair_batch(30, 16, seed=2)
    loss = build_loss("npair_mc", temperature=0.1)
    whole = loss(emb, labels)
    shares = [loss(emb[s : s + 20], labels[s : s + 20], emb, labels, ref_start=s) for s in range(0, 60, 20)]
    torch.testing.assert_close(sum(shares), whole)


def test_uniform_logits_give_log_n() -> None:
    labels = torch.arange(50).repeat_interleave(2)
    emb = torch.zeros(100, 4)
    assert build_loss("npair_mc", l2_reg=0.0)(emb, labels).item() == pytest.approx(math.log(50))


def test_unknown_name_and_parameter_are_named() -> None:
    with pytest.raises(ValueError, match="unknown loss 'npair'.*npair_mc"):
        build_loss("npair")
    with pytest.raises(ValueError, match="loss.margin: unknown parameter of npair_mc"):
        build_loss("npair_mc", margin=0.1)
