"""The class bank: a running, unit-norm embedding per class and the step it was last refreshed.

An update brings rows (sample or class embeddings) with their class ids. Rows are normalized,
averaged per class (a class may come with one row per sample), and for class c observed at step
t with that mean direction e:

    bank[c] <- normalize(m * bank[c] + (1 - m) * e)     (normalize(e) on first sight)
    last_step[c] <- t

Refresh age at step t is t - last_step[c] over the classes seen so far; ``stale_classes`` lists
the classes older than R steps (never-seen ones first), which the training side re-embeds
(``train/refresh.py``) so that no class is older than about R steps. The bank is plain numpy:
it saves to one ``.npz`` file (atomically: written beside, then renamed), from which a
restarted mining actor restores itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dml_dist.atomic import atomic_path


class ClassBank:
    """Class-level embeddings [C, D] with refresh steps."""

    def __init__(self, num_classes: int, dim: int, momentum: float):
        self.embeddings = np.zeros((num_classes, dim), dtype=np.float32)
        self.last_step = np.full(num_classes, -1, dtype=np.int64)
        self.momentum = momentum

    @property
    def num_classes(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def seen(self) -> np.ndarray:
        """[C] bool: classes with an embedding."""
        return self.last_step >= 0

    def coverage(self) -> float:
        return float(self.seen.mean())

    def update(self, step: int, class_ids: np.ndarray, emb_MD: np.ndarray) -> None:
        """Blend in observed rows [M, D] of classes ``class_ids`` [M] (repeats are averaged)."""
        class_ids = np.asarray(class_ids, dtype=np.int64)
        emb_MD = np.asarray(emb_MD, dtype=np.float32)
        if class_ids.shape[0] != emb_MD.shape[0]:
            raise ValueError(f"bank: {class_ids.shape[0]} class ids for {emb_MD.shape[0]} embeddings")
        if class_ids.size == 0:
            return
        unique, inverse = np.unique(class_ids, return_inverse=True)
        mean_UD = np.zeros((unique.size, emb_MD.shape[1]), dtype=np.float32)
        np.add.at(mean_UD, inverse, _normalize(emb_MD))
        observed = _normalize(mean_UD)
        was_seen = self.last_step[unique] >= 0
        old = self.embeddings[unique]
        blended = np.where(was_seen[:, None], self.momentum * old + (1 - self.momentum) * observed, observed)
        self.embeddings[unique] = _normalize(blended)
        self.last_step[unique] = np.maximum(self.last_step[unique], step)

    def refresh_age(self, step: int) -> dict[str, float]:
        """Max and mean of step - last refresh over seen classes (0 when none is seen)."""
        seen = self.seen
        if not seen.any():
            return {"max": 0.0, "mean": 0.0}
        age = step - self.last_step[seen]
        return {"max": float(age.max()), "mean": float(age.mean())}

    def stale_classes(self, step: int, after_steps: int, max_count: int) -> np.ndarray:
        """Up to ``max_count`` classes not refreshed for ``after_steps`` steps, oldest first.

        Never-seen classes count as oldest. Equal ages are taken in class order.
        """
        age = step - self.last_step
        age[~self.seen] = np.iinfo(np.int64).max
        stale = np.flatnonzero(age >= after_steps)
        return stale[np.argsort(-age[stale], kind="stable")[:max_count]].astype(np.int64)

    def state_dict(self) -> dict[str, Any]:
        return {"embeddings": self.embeddings.copy(), "last_step": self.last_step.copy(), "momentum": self.momentum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        embeddings = np.asarray(state["embeddings"], dtype=np.float32)
        if embeddings.shape != self.embeddings.shape:
            raise ValueError(f"bank: saved embeddings {embeddings.shape} do not fit a bank of {self.embeddings.shape}")
        self.embeddings = embeddings
        self.last_step = np.asarray(state["last_step"], dtype=np.int64)
        self.momentum = float(state["momentum"])

    def save(self, path: str | Path, **extra: Any) -> None:
        """Write the bank (and ``extra`` arrays or scalars) to ``path`` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".tmp.npz") as tmp:
            np.savez(tmp, **self.state_dict(), **extra)

    def load(self, path: str | Path) -> dict[str, Any]:
        """Restore from ``save``'s file; returns the ``extra`` values saved with it (0-d arrays as scalars)."""
        with np.load(path) as data:
            state = {key: data[key] for key in data.files}
        self.load_state_dict(state)
        own = ("embeddings", "last_step", "momentum")
        return {key: value.item() if value.ndim == 0 else value for key, value in state.items() if key not in own}


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
