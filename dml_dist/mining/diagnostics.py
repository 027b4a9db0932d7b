"""How evenly a rule visits the classes, and how often a batch holds near-duplicate classes.

Over a window of batches (a partition epoch, or for the other rules ceil(C / N) steps: one
epoch's worth), with v_c the visits of class c in the window:

- ``epoch_distinct_classes``: #{c : v_c > 0}; an epoch of random permutation or partition
  batches reaches C, independent random batches about C (1 - 1/e) in C / N steps;
- ``visit_gini``: the Gini coefficient of (v_1, ..., v_C),
  G = sum_i sum_j |v_i - v_j| / (2 C sum_c v_c): 0 when every class is visited equally often,
  towards 1 when few classes take all visits;
- ``cap_violation_share``: among the mined batches of the window, the share of class pairs
  (unordered, both classes seen by the bank) whose centres have cosine above
  ``mining.similarity_cap`` (None while the cap is off, or no mined batch has a pair).

``batch_diagnostics`` is the pure function of a window; the service keeps the same figures
incrementally in a ``DiagnosticsWindow`` (one counter array, saved with its state) and reports
them with every answer (``MiningAnswer``) and in ``stats()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def gini(counts_C: np.ndarray) -> float:
    """Gini coefficient of non-negative counts [C] (0 = equal; NaN when all are 0).

    With the counts sorted ascending, G = sum_i (2 i - C - 1) v_(i) / (C sum v) (i = 1..C).
    """
    v = np.sort(np.asarray(counts_C, dtype=np.float64))
    total = v.sum()
    if total <= 0:
        return float("nan")
    ranks = np.arange(1, v.size + 1)
    return float(((2 * ranks - v.size - 1) * v).sum() / (v.size * total))


def pairs_over_cap(emb_CD: np.ndarray, seen_C: np.ndarray, classes: np.ndarray, cap: float) -> tuple[int, int]:
    """(pairs with cosine > cap, pairs) among the seen ``classes`` [M] of one batch."""
    members = np.asarray(classes)[seen_C[np.asarray(classes)]]
    num_pairs = members.size * (members.size - 1) // 2
    if num_pairs == 0:
        return 0, 0
    emb_MD = emb_CD[members]
    over = np.triu((emb_MD @ emb_MD.T) > cap, k=1)
    return int(over.sum()), num_pairs


def batch_diagnostics(
    batches: Sequence[np.ndarray],
    mined: Sequence[bool],
    num_classes: int,
    emb_CD: np.ndarray,
    seen_C: np.ndarray,
    cap: float,
) -> dict[str, Any]:
    """The window's figures (module docstring) from its batches ([N] class ids each), which of
    them were mined, and the centres ``emb_CD`` [C, D] of the ``seen_C`` [C] classes."""
    window = DiagnosticsWindow(num_classes)
    for classes, was_mined in zip(batches, mined, strict=True):
        window.add(classes, was_mined, emb_CD, seen_C, cap)
    return window.figures(cap)


class DiagnosticsWindow:
    """Visit counts and cap-pair counts of the batches since the window opened."""

    def __init__(self, num_classes: int):
        self.visits = np.zeros(num_classes, dtype=np.int64)
        self.pairs_over = 0
        self.pairs = 0
        self.batches = 0

    def reset(self) -> None:
        self.visits[:] = 0
        self.pairs_over = self.pairs = self.batches = 0

    def add(self, classes: np.ndarray, mined: bool, emb_CD: np.ndarray, seen_C: np.ndarray, cap: float) -> None:
        """Count one batch's visits, and its pairs above the cap when it was mined (and the cap is on)."""
        np.add.at(self.visits, np.asarray(classes, dtype=np.int64), 1)
        self.batches += 1
        if mined and cap < 1.0:
            over, pairs = pairs_over_cap(emb_CD, seen_C, classes, cap)
            self.pairs_over += over
            self.pairs += pairs

    def figures(self, cap: float) -> dict[str, Any]:
        """``epoch_distinct_classes``, ``visit_gini``, ``cap_violation_share`` (module docstring)."""
        share = self.pairs_over / self.pairs if cap < 1.0 and self.pairs > 0 else None
        visit_gini = gini(self.visits) if self.batches else None
        return {
            "epoch_distinct_classes": int((self.visits > 0).sum()),
            "visit_gini": visit_gini,
            "cap_violation_share": share,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "diag_visits": self.visits.copy(),
            "diag_pairs_over": self.pairs_over,
            "diag_pairs": self.pairs,
            "diag_batches": self.batches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of ``state_dict``; an older file without ``diag_*`` keys opens an empty window."""
        if "diag_visits" not in state:
            self.reset()
            return
        self.visits = np.asarray(state["diag_visits"], dtype=np.int64).copy()
        self.pairs_over = int(state["diag_pairs_over"])
        self.pairs = int(state["diag_pairs"])
        self.batches = int(state["diag_batches"])
