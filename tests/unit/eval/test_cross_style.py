"""Cross-style Recall@1 against a direct loop over its definition (eval/cross_style.py)."""

from __future__ import annotations

import numpy as np
import pytest

from dml_dist.eval.cross_style import cross_style_recall_at_1


def _direct(emb: np.ndarray, labels: np.ndarray, styles: np.ndarray) -> tuple[float, int]:
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    hits, counted = 0, 0
    for q in range(len(labels)):
        others = [g for g in range(len(labels)) if styles[q] < 0 or styles[g] < 0 or styles[g] != styles[q]]
        others = [g for g in others if g != q]
        if styles[q] < 0 or not any(labels[g] == labels[q] for g in others):
            continue
        counted += 1
        nearest = max(others, key=lambda g: float(emb[q] @ emb[g]))
        hits += int(labels[nearest] == labels[q])
    return hits / max(counted, 1), counted


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_direct_loop_over_the_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 12, size=90)
    styles = rng.integers(-1, 5, size=90)  # -1: an image the manifest gives no style
    emb = rng.normal(size=(90, 8)) + 0.8 * np.eye(12, 8)[labels]
    recall, queries = cross_style_recall_at_1(emb, labels, styles, block_size=16)
    expected, expected_queries = _direct(emb, labels, styles)
    assert queries == expected_queries > 0
    assert recall == pytest.approx(expected)


def test_a_same_style_copy_does_not_count() -> None:
    # Class 0 in style 0 twice (identical) and once in style 1 (far): leave-one-out would hit,
    # cross-style must look past the copy and find class 1's image of the other style nearer.
    emb = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.0, 1.0]])
    labels = np.array([0, 0, 0, 1, 1])
    styles = np.array([0, 0, 1, 1, 0])
    recall, queries = cross_style_recall_at_1(emb, labels, styles)
    assert queries == 5
    # Queries 0 and 1 find class 1's image (row 3, style 1) first: misses; row 2 finds row 4
    # (class 1): miss; row 3 finds row 0 or 1 (class 0): miss; row 4 finds row 2 (class 0): miss.
    assert recall == 0.0
