"""Retrieval metrics against pytorch-metric-learning's AccuracyCalculator and direct loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dml_dist.config.sections import PROTOCOLS
from dml_dist.eval.retrieval import (
    kmeans_nmi,
    normalized_mutual_information,
    recall_at_k,
    retrieval_metrics,
)


def _clustered(num_classes: int, per_class: int | list[int], dim: int = 16, noise: float = 1.2, seed: int = 0):
    rng = np.random.default_rng(seed)
    sizes = per_class if isinstance(per_class, list) else [per_class] * num_classes
    labels = np.repeat(np.arange(num_classes), sizes)
    centres = rng.normal(size=(num_classes, dim))
    emb = centres[labels] + rng.normal(scale=noise, size=(labels.size, dim))
    return emb.astype(np.float32), labels


def _oracle(emb: np.ndarray, labels: np.ndarray, query: np.ndarray | None = None, gallery: np.ndarray | None = None):
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"), k="max_bin_count"
    )
    unit = torch.nn.functional.normalize(torch.from_numpy(emb), dim=1)
    t_labels = torch.from_numpy(labels)
    if query is None:
        return calc.get_accuracy(unit, t_labels)
    return calc.get_accuracy(unit[query], t_labels[query], unit[gallery], t_labels[gallery])


def _recall_loop(emb, labels, k, query=None, gallery=None):
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    query = np.arange(len(labels)) if query is None else query
    gallery = np.arange(len(labels)) if gallery is None else gallery
    hits = 0
    for q in query:
        sims = unit[gallery] @ unit[q]
        sims[gallery == q] = -np.inf
        nearest = gallery[np.argsort(-sims, kind="stable")[:k]]
        hits += int(np.any(labels[nearest] == labels[q]))
    return hits / len(query)


@pytest.mark.parametrize("sizes", [5, [2, 3, 4, 5, 6, 7, 8, 9] * 5])
def test_matches_pytorch_metric_learning_leave_one_out(sizes) -> None:
    emb, labels = _clustered(40, sizes)
    ours = retrieval_metrics(emb, labels, [1, 2, 4, 8], block_size=64)
    oracle = _oracle(emb, labels)
    assert ours.precision_at_1 == pytest.approx(oracle["precision_at_1"], abs=1e-9)
    assert ours.r_precision == pytest.approx(oracle["r_precision"], abs=1e-9)
    assert ours.map_at_r == pytest.approx(oracle["mean_average_precision_at_r"], abs=1e-9)
    assert ours.recall[1] == pytest.approx(ours.precision_at_1)
    for k in (1, 2, 4, 8):
        assert ours.recall[k] == pytest.approx(_recall_loop(emb, labels, k), abs=1e-12)


def test_query_gallery_split_matches_pytorch_metric_learning() -> None:
    emb, labels = _clustered(30, 6, seed=1)
    rng = np.random.default_rng(1)
    is_query = np.zeros(labels.size, dtype=bool)
    for c in range(30):  # In-Shop style: two queries per item, the rest gallery
        is_query[rng.choice(np.flatnonzero(labels == c), 2, replace=False)] = True
    query, gallery = np.flatnonzero(is_query), np.flatnonzero(~is_query)
    ours = retrieval_metrics(emb, labels, PROTOCOLS["inshop"][:3], query_idx=query, gallery_idx=gallery, block_size=7)
    oracle = _oracle(emb, labels, query, gallery)
    assert ours.precision_at_1 == pytest.approx(oracle["precision_at_1"], abs=1e-9)
    assert ours.r_precision == pytest.approx(oracle["r_precision"], abs=1e-9)
    assert ours.map_at_r == pytest.approx(oracle["mean_average_precision_at_r"], abs=1e-9)
    for k in ours.recall:
        assert ours.recall[k] == pytest.approx(_recall_loop(emb, labels, k, query, gallery), abs=1e-12)
    assert ours.num_queries == 60 and ours.num_gallery == 120


def test_blockwise_equals_one_block() -> None:
    emb, labels = _clustered(50, [3, 4, 5, 6, 7] * 10, seed=2)
    whole = retrieval_metrics(emb, labels, [1, 10, 100], block_size=10_000)
    for block in (1, 7, 64):
        part = retrieval_metrics(emb, labels, [1, 10, 100], block_size=block)
        assert part.recall == whole.recall
        assert part.map_at_r == pytest.approx(whole.map_at_r, abs=1e-12)
        assert part.r_precision == pytest.approx(whole.r_precision, abs=1e-12)


def test_recall_keeps_its_signature_and_never_counts_the_query_itself() -> None:
    labels = np.arange(10)
    emb = np.ones((10, 4), dtype=np.float32)
    assert recall_at_k(emb, labels, [1, 5]) == {1: 0.0, 5: 0.0}
    emb2, labels2 = _clustered(20, 4, seed=3)
    assert recall_at_k(emb2, labels2, [1, 2]) == retrieval_metrics(emb2, labels2, [1, 2]).recall


def test_nmi_matches_a_reference_implementation() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, 7, 500), rng.integers(0, 5, 500)
    b[:250] = a[:250] % 5
    try:
        from sklearn.metrics import normalized_mutual_info_score
    except ImportError:  # not a runtime dependency; a small direct version instead
        normalized_mutual_info_score = None
    ours = normalized_mutual_information(a, b)
    if normalized_mutual_info_score is not None:
        assert ours == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-10)
    assert normalized_mutual_information(a, a) == pytest.approx(1.0)
    assert normalized_mutual_information(a, 10 - a) == pytest.approx(1.0)  # relabelling changes nothing


def test_kmeans_nmi_separates_clusters_and_is_seeded() -> None:
    tight, labels = _clustered(10, 20, noise=0.05, seed=5)
    loose, _ = _clustered(10, 20, noise=3.0, seed=5)
    assert kmeans_nmi(tight, labels) > 0.85
    assert kmeans_nmi(loose, labels) < kmeans_nmi(tight, labels)
    assert kmeans_nmi(loose, labels, seed=1) == kmeans_nmi(loose, labels, seed=1)


def test_protocol_presets() -> None:
    assert PROTOCOLS["sop"] == [1, 10, 100, 1000] and PROTOCOLS["cub200"] == [1, 2, 4, 8, 16, 32]
