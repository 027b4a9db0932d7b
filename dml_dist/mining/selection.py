"""Greedy hard-negative-class selection (Sohn 2016, section 3.2).

"We randomly select a class, then greedily add a new class that violates the triplet
constraint the most w.r.t. the selected classes till we reach N classes." With unit class
embeddings c_k, a candidate class c violates the triplet constraint most when it is most
similar to some already chosen class, so each pick is

    next = argmax_{c not chosen} max_{s chosen} c^T s

kept as a running maximum: one matrix-vector product [C, D] x [D] per pick, O(N C D) in all.
Ties are broken at random (a random permutation decides among equal scores). A share of the N
classes can be drawn uniformly instead, for exploration.
"""

from __future__ import annotations

import numpy as np


def select_hard_classes(
    class_embeddings: np.ndarray,
    n: int,
    seed: int = 0,
    eligible: np.ndarray | None = None,
    random_share: float = 0.0,
) -> np.ndarray:
    """Indices of N distinct classes: one random, then greedy hardest, then a random share.

    Args:
        class_embeddings: [C, D] class embeddings (normalized rows: similarity is the dot product).
        n: number of classes to choose.
        seed: the choice is a pure function of the inputs and this seed.
        eligible: optional [C] bool mask of classes the greedy part may pick (for example those
            with an embedding); the random share draws from all classes.
        random_share: share of the N classes drawn uniformly from the classes not yet chosen.
    Returns:
        int64 array [n]: greedy picks first (in pick order), then the random ones.
    """
    num_classes = class_embeddings.shape[0]
    if n > num_classes:
        raise ValueError(f"select_hard_classes: n={n} is larger than the {num_classes} classes")
    eligible = np.ones(num_classes, dtype=bool) if eligible is None else eligible.astype(bool)
    rng = np.random.default_rng(seed)
    num_hard = min(n - int(round(n * random_share)), int(eligible.sum()))
    chosen = np.zeros(num_classes, dtype=bool)
    picks: list[int] = []
    if num_hard > 0:
        emb_CD = class_embeddings.astype(np.float32, copy=False)
        order_C = rng.permutation(num_classes)  # tie-break: the earliest in a random order wins
        emb_perm = emb_CD[order_C]
        open_perm = eligible[order_C].copy()
        first = int(rng.choice(np.flatnonzero(open_perm)))
        max_sim_C = np.full(num_classes, -np.inf, dtype=np.float32)
        pick = first
        for _ in range(num_hard):
            picks.append(int(order_C[pick]))
            open_perm[pick] = False
            max_sim_C = np.maximum(max_sim_C, emb_perm @ emb_perm[pick])
            if len(picks) == num_hard:
                break
            pick = int(np.argmax(np.where(open_perm, max_sim_C, -np.inf)))
        chosen[picks] = True
    num_random = n - len(picks)
    if num_random > 0:
        rest = rng.choice(np.flatnonzero(~chosen), size=num_random, replace=False)
        picks.extend(int(c) for c in rest)
    return np.asarray(picks, dtype=np.int64)
