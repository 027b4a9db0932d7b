"""Where rank 0 gets each step's classes: the mining service, or random classes.

``MiningClient`` asks the service for step t+1's classes while step t trains and waits for the
answer at most ``timeout_s``; when the service is slow, dead or restarting it falls back to
random classes for that step and counts the fallback, as it does when the service answers with
random classes because it is not warm yet (each fallback says why: ``timeout``,
``unavailable``, ``warmup`` or ``graph_pending``). Ray restarts a dead service, which
restores its bank from the last save, so later requests are answered again. Answers may carry
``stale_classes`` for rank 0 to re-embed (``mining/refresh.py``). ``RandomClasses`` is the null
object used when mining is off, so the training loop has no ``if mining:`` branches.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from dml_dist.data.sampler import random_classes


class RandomClasses:
    """Uniform random classes every step (mining off)."""

    def __init__(self, seed: int, num_classes: int, n: int):
        self.seed, self.num_classes, self.n = seed, num_classes, n
        self.fallbacks = 0

    def request(self, step: int) -> None:
        pass

    def classes_for(self, step: int) -> dict[str, Any]:
        return {"classes": random_classes(self.seed, step, self.num_classes, self.n), "mined": False}

    def publish(self, step: int, class_ids: np.ndarray, emb_CD: np.ndarray) -> None:
        pass

    def save_bank(self, path: str) -> None:
        pass


class MiningClient(RandomClasses):
    """Rank 0's handle on the mining actor, with a bounded wait and a random fallback."""

    def __init__(self, actor: Any, timeout_s: float, seed: int, num_classes: int, n: int):
        super().__init__(seed, num_classes, n)
        self.actor = actor
        self.timeout_s = timeout_s
        self.pending: dict[int, Any] = {}

    def request(self, step: int) -> None:
        try:
            self.pending[step] = self.actor.next_classes.remote(step, self.n)
        except Exception:  # a dead actor handle raises on submit; the step falls back
            self.pending.pop(step, None)

    def classes_for(self, step: int) -> dict[str, Any]:
        import ray

        ref = self.pending.pop(step, None)
        reason = "unavailable"  # no request could be sent
        if ref is not None:
            try:
                answer: dict[str, Any] = ray.get(ref, timeout=self.timeout_s)
            except ray.exceptions.GetTimeoutError:  # slow, or restarting: never block training
                reason = "timeout"
            except Exception:  # the actor died with the request
                reason = "unavailable"
            else:
                if answer.get("mined", False):
                    return answer
                # The service answered with random classes (cold bank, or no graph yet).
                self.fallbacks += 1
                return {**answer, "fallback": True, "fallback_reason": answer.get("reason", "warmup")}
        self.fallbacks += 1
        return {**super().classes_for(step), "fallback": True, "fallback_reason": reason}

    def publish(self, step: int, class_ids: np.ndarray, emb_CD: np.ndarray) -> None:
        # Fire and forget: a lost publish only ages the bank.
        with contextlib.suppress(Exception):
            self.actor.publish.remote(step, class_ids, emb_CD)

    def save_bank(self, path: str) -> None:
        """Ask the service to save its bank to ``path`` (fire and forget; a restart restores it)."""
        with contextlib.suppress(Exception):
            self.actor.save.remote(path)
