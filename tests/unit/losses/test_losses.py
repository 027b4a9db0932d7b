"""Every loss of the registry: pytorch-metric-learning parity where it has the loss, direct loops
over the paper's formula where it has not, shares that sum to the global loss, edge cases."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml
from pytorch_metric_learning import miners
from pytorch_metric_learning.distances import LpDistance

from dml_dist.losses import LOSSES, build_loss
from dml_dist.losses.pairs import label_masks, positive_index


def _batch(num_classes: int = 8, per_class: int = 3, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    labels = labels[torch.randperm(labels.numel(), generator=gen)]
    return torch.randn(labels.numel(), dim, generator=gen, dtype=torch.float64), labels


def _value_and_grad(fn, emb: torch.Tensor, *args) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    leaf = emb.clone().requires_grad_(True)
    value = fn(leaf, *args)
    (grad,) = torch.autograd.grad(value, leaf)
    return value.detach(), grad


def _assert_same(ours, ref, emb: torch.Tensor, labels: torch.Tensor, rtol: float | None = None) -> None:  # type: ignore[no-untyped-def]
    v1, g1 = _value_and_grad(ours, emb, labels)
    v2, g2 = _value_and_grad(ref, emb, labels)
    atol = None if rtol is None else rtol
    torch.testing.assert_close(v1, v2, rtol=rtol, atol=atol)
    torch.testing.assert_close(g1, g2, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- PML parity


class _Mined(torch.nn.Module):
    """A PML loss fed by a PML miner on the same batch."""

    def __init__(self, loss: torch.nn.Module, miner: torch.nn.Module):
        super().__init__()
        self.loss, self.miner = loss, miner

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(emb, labels, self.miner(emb, labels))


class _NormalizedInput(torch.nn.Module):
    """PML's AngularLoss normalizes anchors and positives but not the negatives x_n; the paper
    normalizes all, so the oracle gets L2-normalized input (same function of the raw input)."""

    def __init__(self, loss: torch.nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(F.normalize(emb, dim=1), labels)


SQ = LpDistance(power=2)
PML_CASES = {
    # contrastive: PML is p = 1 with AvgNonZero per kind; the paper's p = 2 / mean is tested by a loop.
    "contrastive": (dict(power=1, reduction="nonzero"), lambda: pml.ContrastiveLoss(pos_margin=0, neg_margin=1)),
    "triplet_all": (dict(mining="all"), lambda: pml.TripletMarginLoss(margin=0.2, distance=SQ)),
    "triplet_semihard": (
        dict(mining="semihard"),
        lambda: _Mined(
            pml.TripletMarginLoss(margin=0.2, distance=SQ),
            miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard", distance=SQ),
        ),
    ),
    "triplet_hard": (
        dict(mining="hard"),
        lambda: _Mined(pml.TripletMarginLoss(margin=0.2, distance=SQ), miners.BatchHardMiner(distance=SQ)),
    ),
    "angular": ({}, lambda: _NormalizedInput(pml.AngularLoss(alpha=40))),
    "lifted": ({}, lambda: pml.LiftedStructureLoss(neg_margin=1, pos_margin=0)),
    "multi_similarity": (
        {},
        lambda: _Mined(pml.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), miners.MultiSimilarityMiner(epsilon=0.1)),
    ),
    "nca": ({}, lambda: pml.NCALoss(softmax_scale=1, distance=LpDistance(power=2, normalize_embeddings=False))),
    "nca_normalized": (dict(normalize=True), lambda: pml.NCALoss(softmax_scale=1, distance=LpDistance(power=2))),
    "margin": ({}, lambda: pml.MarginLoss(margin=0.2, nu=0, beta=1.2, learn_beta=True)),
    "histogram": ({}, lambda: pml.HistogramLoss(n_bins=100)),
}


@pytest.mark.parametrize("case", sorted(PML_CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pytorch_metric_learning(case: str, seed: int) -> None:
    params, make_ref = PML_CASES[case]
    emb, labels = _batch(seed=seed)
    if case == "nca":
        emb = emb * 0.3  # keep exp(-d^2) above underflow: PML drops anchors whose probability is 0
    name = case.split("_")[0] if case.startswith(("triplet", "nca")) else case
    # PML bins histogram similarities in float32, so values differ by ~1e-7 on float64 input.
    _assert_same(build_loss(name, **params), make_ref(), emb, labels, rtol=1e-5 if case == "histogram" else None)


def test_margin_learnable_beta_gradient_matches_pytorch_metric_learning() -> None:
    emb, labels = _batch(seed=3)
    ours, ref = build_loss("margin", nu=0.1), pml.MarginLoss(margin=0.2, nu=0.1, beta=1.2, learn_beta=True)
    ours(emb, labels).backward()
    ref(emb, labels).backward()
    torch.testing.assert_close(ours.beta.grad.double(), ref.beta.grad.double())
    assert [n for n, _ in ours.named_parameters()] == ["beta"]


# ----------------------------------------------------------------------------- direct loops


def _pairs(labels: torch.Tensor):  # type: ignore[no-untyped-def]
    n = len(labels)
    for i, j in itertools.product(range(n), range(n)):
        if i != j:
            yield i, j, bool(labels[i] == labels[j])


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b / (a.norm() * b.norm())


def _loop_contrastive(emb, labels, m=1.0):  # type: ignore[no-untyped-def]
    x = F.normalize(emb, dim=1)
    terms = [0.5 * (x[i] - x[j]).norm() ** 2 if pos else 0.5 * torch.relu(m - (x[i] - x[j]).norm()) ** 2
             for i, j, pos in _pairs(labels)]  # fmt: skip
    return sum(terms) / len(terms)


def _loop_tuplet(emb, labels, l2_reg=0.002):  # type: ignore[no-untyped-def]
    terms = []
    for i, p, pos in _pairs(labels):
        if not pos:
            continue
        negs = [k for k in range(len(labels)) if labels[k] != labels[i]]
        inner = sum(torch.exp(emb[i] @ emb[k] - emb[i] @ emb[p]) for k in negs)
        terms.append(torch.log(1 + inner) + l2_reg / 4 * (emb[i] @ emb[i] + emb[p] @ emb[p]))
    return sum(terms) / len(terms)


def _loop_npair_ovo(emb, labels, l2_reg=0.002):  # type: ignore[no-untyped-def]
    classes = sorted({int(y) for y in labels})
    rows = {c: [i for i in range(len(labels)) if int(labels[i]) == c] for c in classes}
    anc = [emb[rows[c][0]] for c in classes]
    pos = [emb[rows[c][1]] for c in classes]
    n = len(classes)
    total = sum(
        torch.log(1 + torch.exp(anc[i] @ pos[j] - anc[i] @ pos[i])) for i in range(n) for j in range(n) if j != i
    )
    return total / n + l2_reg / 4 * (sum(a @ a for a in anc) / n + sum(p @ p for p in pos) / n)


def _loop_binomial(emb, labels, alpha=2.0, beta=0.5, cost=25.0):  # type: ignore[no-untyped-def]
    pairs = list(_pairs(labels))
    n_pos = sum(p for *_, p in pairs)
    n_neg = len(pairs) - n_pos
    total = 0.0
    for i, j, pos in pairs:
        m, w = (1.0, 1 / n_pos) if pos else (-cost, 1 / n_neg)
        total = total + w * torch.log(1 + torch.exp(-alpha * (_cos(emb[i], emb[j]) - beta) * m))
    return total


def _dro_pair_losses(emb, labels):  # type: ignore[no-untyped-def]
    out = []
    for i, j, pos in _pairs(labels):
        s = _cos(emb[i], emb[j])
        out.append((torch.relu(0.2 + 0.5 - s) if pos else torch.relu(0.2 + s - 0.5), pos))
    return out


def _loop_dro_topk(emb, labels, k):  # type: ignore[no-untyped-def]
    values = sorted((v for v, _ in _dro_pair_losses(emb, labels)), key=float, reverse=True)
    return sum(values[:k]) / k


def _loop_dro_topk_pn(emb, labels, k_pos, k_neg):  # type: ignore[no-untyped-def]
    pl = _dro_pair_losses(emb, labels)
    pos = sorted((v for v, p in pl if p), key=float, reverse=True)[:k_pos]
    neg = sorted((v for v, p in pl if not p), key=float, reverse=True)[:k_neg]
    return (sum(pos) + sum(neg)) / (len(pos) + len(neg))


def _loop_dro_kl(emb, labels, gamma):  # type: ignore[no-untyped-def]
    values = [v for v, _ in _dro_pair_losses(emb, labels)]
    z = sum(math.exp(float(v.detach()) / gamma) for v in values)
    return sum(math.exp(float(v.detach()) / gamma) / z * v for v in values)


LOOP_CASES = {
    "contrastive": ({}, _loop_contrastive),
    "tuplet": ({}, _loop_tuplet),
    "binomial": ({}, _loop_binomial),
    "dro_topk": (dict(k=40), lambda e, y: _loop_dro_topk(e, y, 40)),
    "dro_topk_pn": (dict(k_pos=10, k_neg=30), lambda e, y: _loop_dro_topk_pn(e, y, 10, 30)),
    "dro_kl": (dict(gamma=0.1), lambda e, y: _loop_dro_kl(e, y, 0.1)),
}


@pytest.mark.parametrize("name", sorted(LOOP_CASES))
def test_matches_a_direct_loop_over_the_formula(name: str) -> None:
    params, loop = LOOP_CASES[name]
    emb, labels = _batch(num_classes=5, per_class=3, dim=6, seed=4)
    _assert_same(build_loss(name, **params), loop, emb, labels)


def test_npair_ovo_matches_a_direct_loop() -> None:
    emb, labels = _batch(num_classes=6, per_class=2, dim=6, seed=5)
    _assert_same(build_loss("npair_ovo"), _loop_npair_ovo, emb, labels)


def test_angular_with_npair_is_npair_plus_two_angular() -> None:
    emb, labels = _batch(num_classes=6, per_class=2, seed=6)
    combined = build_loss("angular", with_npair=True)(emb, labels)
    expected = build_loss("npair_mc")(emb, labels) + 2 * build_loss("angular")(emb, labels)
    torch.testing.assert_close(combined, expected)


# ----------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_rank_shares_sum_to_the_global_loss_and_gradient(name: str) -> None:
    """Shares over 3 'ranks' with the reference set carrying gradient (as the autograd gather does)."""
    emb, labels = _batch(num_classes=10, per_class=3, seed=7)
    params = {"k": 50} if name == "dro_topk" else {}
    whole, whole_grad = _value_and_grad(build_loss(name, **params), emb, labels)

    def sharded(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = build_loss(name, **params)
        return sum(loss(x[s : s + 10], y[s : s + 10], x, y, ref_start=s) for s in range(0, 30, 10))  # type: ignore[return-value]

    shares, shares_grad = _value_and_grad(sharded, emb, labels)
    torch.testing.assert_close(shares, whole)
    torch.testing.assert_close(shares_grad, whole_grad)


def test_positive_index_lists_exactly_each_anchors_positives() -> None:
    """The gathered positive slots of any share of any batch are the positive mask's entries."""
    for seed in range(30):
        gen = torch.Generator().manual_seed(seed)
        n = int(torch.randint(1, 40, (1,), generator=gen))
        labels = torch.randint(0, 6, (n,), generator=gen)
        start = int(torch.randint(0, n, (1,), generator=gen))
        size = int(torch.randint(1, n - start + 1, (1,), generator=gen))
        index, valid = positive_index(labels[start : start + size], labels, start)
        pos, _ = label_masks(labels[start : start + size], labels, start)
        rebuilt = torch.zeros_like(pos)
        rebuilt[torch.arange(size)[:, None].expand_as(index)[valid], index[valid]] = True
        assert torch.equal(rebuilt, pos) and int(valid.sum()) == int(pos.sum()), seed
        assert index.shape[1] == max(1, int(pos.sum(dim=1).max())), seed


# ----------------------------------------------------------------------------- edge cases


def _edge_batches() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    emb, labels = _batch(num_classes=6, per_class=2, dim=8, seed=8)
    emb = emb.float()
    return {
        "no_positive": (emb, torch.arange(12)),
        "no_negative": (emb, torch.zeros(12, dtype=torch.long)),
        "identical": (emb[:1].repeat(12, 1), labels),
        "zeros": (torch.zeros(12, 8), labels),
        "large_norms": (emb * 1e4, labels),
    }


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_edge_cases_give_finite_values_and_gradients(name: str) -> None:
    for case, (emb, labels) in _edge_batches().items():
        value, grad = _value_and_grad(build_loss(name), emb, labels)
        assert torch.isfinite(value), (name, case, value)
        assert torch.isfinite(grad).all(), (name, case)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_at_n_1000_is_finite(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(9)
    emb = torch.randn(1000, 64, generator=gen).to(dtype)
    labels = torch.arange(500).repeat_interleave(2)
    for name in LOSSES:
        value, grad = _value_and_grad(build_loss(name), emb, labels)
        assert torch.isfinite(value), (name, value)
        assert grad.dtype == dtype and torch.isfinite(grad).all(), name


def test_every_loss_builds_with_defaults_and_rejects_unknown_parameters() -> None:
    for name in LOSSES:
        build_loss(name)
        with pytest.raises(ValueError, match=f"loss.nonsense: unknown parameter of {name}"):
            build_loss(name, nonsense=1)
    with pytest.raises(ValueError, match="valid names: angular, binomial"):
        build_loss("ms")
