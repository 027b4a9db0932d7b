"""Recall@K with faiss against a direct loop over the definition."""

from __future__ import annotations

import numpy as np

from dml_dist.eval.retrieval import recall_at_k


def _recall_loop(emb: np.ndarray, labels: np.ndarray, k: int) -> float:
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    hits = 0
    for q in range(len(labels)):
        sims = unit @ unit[q]
        sims[q] = -np.inf
        nearest = np.argsort(-sims, kind="stable")[:k]
        hits += int(np.any(labels[nearest] == labels[q]))
    return hits / len(labels)


def test_recall_matches_a_direct_loop() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 16))
    labels = np.repeat(np.arange(40), 5)
    emb = centres[labels] + rng.normal(scale=1.2, size=(200, 16))
    recall = recall_at_k(emb.astype(np.float32), labels, [1, 2, 4, 8])
    for k, value in recall.items():
        assert abs(value - _recall_loop(emb, labels, k)) < 1e-9, k
    assert 0.0 < recall[1] < recall[8] <= 1.0


def test_identical_embeddings_never_count_the_query_itself() -> None:
    labels = np.arange(10)
    emb = np.ones((10, 4), dtype=np.float32)
    assert recall_at_k(emb, labels, [1, 5]) == {1: 0.0, 5: 0.0}
