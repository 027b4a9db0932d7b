"""How hard a batch is: by the class bank (for the service's answers) and for the model.

``nearest_negative_similarity`` reads the class bank: the mean similarity of each chosen class
to its closest chosen class (the service reports it with every answer,
``MiningAnswer.negative_similarity``). ``violation_rate`` reads the model's embeddings of the
global batch: the share of anchors whose hardest negative beats their hardest positive (the
training side computes it on rank 0 at log steps, ``metrics.jsonl`` and Prometheus).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def nearest_negative_similarity(class_embeddings: np.ndarray, classes: np.ndarray) -> float:
    """How hard a batch is: mean over its classes of the similarity to the closest other class.

    NaN when fewer than two classes are given. [M, M] similarities, M = len(classes).
    """
    if len(classes) < 2:
        return float("nan")
    emb_MD = np.asarray(class_embeddings[np.asarray(classes)], dtype=np.float32)
    sim_MM = emb_MD @ emb_MD.T
    np.fill_diagonal(sim_MM, -np.inf)
    return float(sim_MM.max(axis=1).mean())


def violation_rate(ref_ND: Any, labels_N: Any, margin: float = 0.0) -> float:
    """Share of anchors whose hardest in-batch negative violates the margin.

    For anchor i with unit embedding f_i: s+ = min over its positives p of f_i^T f_p (the
    hardest positive), s- = max over negatives j (other class) of f_i^T f_j; anchor i violates
    when s- > s+ - margin. Anchors without a positive or a negative are left out. Works on the
    global batch (``ref_ND``, [N, D], torch or numpy; normalized here) with its labels [N];
    costs one N x N similarity. Returns NaN when no anchor qualifies.

    What it says: near 0, the batch's negatives are already separated (the loss learns little
    from them; harder classes would help); near 1, the batch is mostly confusions (typical at
    step 0, or a batch too hard to learn from). A random-class batch of a trained model sits
    low; a mined batch should sit higher than a random one at the same step.
    """
    emb = np.asarray(ref_ND.detach().float().cpu().numpy() if hasattr(ref_ND, "detach") else ref_ND, np.float32)
    labels = np.asarray(labels_N.cpu().numpy() if hasattr(labels_N, "cpu") else labels_N)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sim_NN = emb @ emb.T
    same_NN = labels[:, None] == labels[None, :]
    np.fill_diagonal(same_NN, False)
    other_NN = labels[:, None] != labels[None, :]
    hardest_pos = np.where(same_NN, sim_NN, np.inf).min(axis=1)
    hardest_neg = np.where(other_NN, sim_NN, -np.inf).max(axis=1)
    valid = same_NN.any(axis=1) & other_NN.any(axis=1)
    if not valid.any():
        return float("nan")
    return float(np.mean(hardest_neg[valid] > hardest_pos[valid] - margin))
