"""Synthetic class embeddings and a driver that runs a ``MiningService`` as the training loop does,
shared by the mining tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dml_dist.config import MiningConfig
from dml_dist.mining.service import MiningService


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered_embeddings(num_clusters: int, size: int, dim: int, noise: float, seed: int = 0) -> np.ndarray:
    """[num_clusters * size, dim]: classes c and c' are in one cluster iff c // size == c' // size."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((num_clusters, dim)))
    return unit(np.repeat(centres, size, axis=0) + noise * rng.standard_normal((num_clusters * size, dim)))


def drive(service: MiningService, steps: range, n: int, emb: np.ndarray, seed: int) -> list[list[int]]:
    """Run a service as the training side does: ask two steps ahead, publish each step's classes
    (and every 5th step a refresh of the stale classes it was told), in the loop's order."""
    answers = []
    for t in steps:
        answer = service.next_classes(t, n)
        service.next_classes(t + 1, n)
        service.next_classes(t + 2, n)
        classes = np.asarray(answer.classes)
        noise = np.random.default_rng([seed, t]).standard_normal((n, emb.shape[1])).astype(np.float32)
        drift = 0.3 * np.sin(t / 7.0)  # the model moves: the class embeddings change with t
        service.publish(t, classes, emb[classes] + drift * noise)
        stale = answer.stale_classes
        if stale:
            service.publish(t, np.asarray(stale), emb[np.asarray(stale)])
        answers.append(answer.classes)
    return answers


def drive_with_a_restart(
    config: MiningConfig, emb: np.ndarray, n: int, total: int, restart: int, state_dir: Path
) -> tuple[MiningService, MiningService, list[list[int]], int]:
    """Drive one service for ``total`` steps, and another that is saved after ``restart`` steps and
    restored into a new service, which drives the rest.

    Returns (uninterrupted, resumed, the uninterrupted answers, the step ``restore`` returned);
    asserts that the resumed service deals the same batches from ``restart`` on.
    """
    num_classes, dim = emb.shape
    uninterrupted = MiningService(num_classes, dim, config, seed=3)
    full = drive(uninterrupted, range(total), n, emb, seed=1)
    first = MiningService(num_classes, dim, config, seed=3)
    drive(first, range(restart), n, emb, seed=1)
    path = first.save(str(state_dir / "state.npz"))
    resumed = MiningService(num_classes, dim, config, seed=3)
    restored_step = resumed.restore(path)
    assert drive(resumed, range(restart, total), n, emb, seed=1) == full[restart:]
    return uninterrupted, resumed, full, restored_step
