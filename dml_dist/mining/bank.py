"""The class bank: a running, unit-norm embedding per class and the step it was last refreshed.

Update for class c observed at step t with the mean normalized embedding e of its samples:

    bank[c] <- normalize(m * bank[c] + (1 - m) * e)     (normalize(e) on first sight)
    last_step[c] <- t

Refresh age at step t is t - last_step[c] over the classes seen so far.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ClassBank:
    """Class-level embeddings [C, D] with refresh steps; plain numpy, so it pickles into checkpoints."""

    def __init__(self, num_classes: int, dim: int, momentum: float):
        self.embeddings = np.zeros((num_classes, dim), dtype=np.float32)
        self.last_step = np.full(num_classes, -1, dtype=np.int64)
        self.momentum = momentum

    @property
    def seen(self) -> np.ndarray:
        """[C] bool: classes with an embedding."""
        return self.last_step >= 0

    def coverage(self) -> float:
        return float(self.seen.mean())

    def update(self, step: int, class_ids: np.ndarray, emb_CD: np.ndarray) -> None:
        """Blend in the observed class embeddings (rows need not be normalized)."""
        observed = _normalize(np.asarray(emb_CD, dtype=np.float32))
        class_ids = np.asarray(class_ids, dtype=np.int64)
        old = self.embeddings[class_ids]
        was_seen = self.last_step[class_ids] >= 0
        blended = np.where(was_seen[:, None], self.momentum * old + (1 - self.momentum) * observed, observed)
        self.embeddings[class_ids] = _normalize(blended)
        self.last_step[class_ids] = step

    def refresh_age(self, step: int) -> dict[str, float]:
        """Max and mean of step - last refresh over seen classes (0 when none is seen)."""
        seen = self.seen
        if not seen.any():
            return {"max": 0.0, "mean": 0.0}
        age = step - self.last_step[seen]
        return {"max": float(age.max()), "mean": float(age.mean())}

    def state_dict(self) -> dict[str, Any]:
        return {"embeddings": self.embeddings.copy(), "last_step": self.last_step.copy(), "momentum": self.momentum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.embeddings = np.asarray(state["embeddings"], dtype=np.float32)
        self.last_step = np.asarray(state["last_step"], dtype=np.int64)
        self.momentum = float(state["momentum"])


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
