"""Where rank 0 gets each step's classes: the mining service, or random classes.

``MiningClient`` keeps the service two steps ahead: ``request(t + 1)``, sent at the start of
step t, asks for steps t + 1 and t + 2 (those not asked yet). So when step t starts, the answer
for t + 1 was asked for a whole step earlier, and ``peek(t + 1)`` has it at once: the loader can
decode step t + 1's images while step t trains, as with random classes. The service reads the
publishes of steps <= t - 3 for step t's answer (``service.PUBLISH_LAG``), which the two-step
lead guarantees have arrived. ``classes_for(t)`` returns the answer ``peek`` got, or waits for it
at most ``timeout_s``; when the service is slow, dead or restarting it falls back to
random classes for that step and counts the fallback, as it does when the service answers with
random classes because it is not warm yet (each fallback says why: ``timeout``,
``unavailable``, ``warmup`` or ``graph_pending``). Ray restarts a dead service, which
restores its bank from the last save, so later requests are answered again. Answers may carry
``stale_classes`` for rank 0 to re-embed (``mining/refresh.py``). ``RandomClasses`` is the null
object used when mining is off, so the training loop has no ``if mining:`` branches.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
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

    def peek(self, step: int) -> list[int]:
        """The classes ``classes_for(step)`` will return, known ahead (for the loader's prefetch)."""
        return list(self.classes_for(step)["classes"])

    def publish(self, step: int, class_ids: np.ndarray, emb_CD: np.ndarray) -> None:
        pass

    def save_bank(self, path: str) -> None:
        pass

    def save_state(self, path: str, timeout_s: float = 60.0) -> str | None:
        """Nothing to save: random classes are a pure function of (seed, step)."""
        return None

    def restore_state(self, path: str, timeout_s: float = 60.0) -> int | None:
        return None


class MiningClient(RandomClasses):
    """Rank 0's handle on the mining actor, with a bounded wait and a random fallback."""

    def __init__(self, actor: Any, timeout_s: float, seed: int, num_classes: int, n: int):
        super().__init__(seed, num_classes, n)
        self.actor = actor
        self.timeout_s = timeout_s
        self.pending: dict[int, Any] = {}
        self.peeked: dict[int, dict[str, Any]] = {}
        self.asked_until = -1

    def request(self, step: int) -> None:
        """Ask for ``step`` and ``step + 1`` (those not asked yet); forget answers of older steps."""
        for ahead in range(max(step, self.asked_until + 1), step + 2):
            try:
                self.pending[ahead] = self.actor.next_classes.remote(ahead, self.n)
            except Exception:  # a dead actor handle raises on submit; the step falls back
                self.pending.pop(ahead, None)
            self.asked_until = ahead
        for old in [s for s in self.pending if s < step - 1]:
            del self.pending[old]

    def peek(self, step: int) -> list[int]:
        """Step's classes ahead of ``classes_for(step)``, which then returns this same answer."""
        answer = self._answer(step)
        self.peeked[step] = answer
        return list(answer["classes"])

    def classes_for(self, step: int) -> dict[str, Any]:
        answer = self.peeked.pop(step, None)
        for old in [s for s in self.peeked if s < step]:
            del self.peeked[old]
        return answer if answer is not None else self._answer(step)

    def _answer(self, step: int) -> dict[str, Any]:
        """The service's answer for ``step`` within ``timeout_s``, else random classes (counted)."""
        import ray

        if step not in self.pending and step > self.asked_until:
            self.request(step)  # nobody asked (first step of a run): ask now
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
                if answer.get("mined", False) or answer.get("reason") == "rule":
                    return answer
                # The service answered with random classes (warm-up, or no graph yet).
                self.fallbacks += 1
                return {**answer, "fallback": True, "fallback_reason": answer.get("reason", "warmup")}
        self.fallbacks += 1
        return {**super().classes_for(step), "fallback": True, "fallback_reason": reason}

    def publish(self, step: int, class_ids: np.ndarray, emb_CD: np.ndarray) -> None:
        # Fire and forget: a lost publish only ages the bank.
        with contextlib.suppress(Exception):
            self.actor.publish.remote(step, class_ids, emb_CD)

    def save_bank(self, path: str) -> None:
        """Ask the service to save its state to ``path`` (fire and forget; a restart restores it)."""
        with contextlib.suppress(Exception):
            self.actor.save.remote(path)

    def save_state(self, path: str, timeout_s: float = 60.0) -> str | None:
        """Write the service's whole state to ``path`` on this node (for a checkpoint); the state
        comes through Ray, so the actor may run on any node."""
        import ray

        data: bytes = ray.get(self.actor.state_bytes.remote(), timeout=timeout_s)
        Path(path).write_bytes(data)
        return path

    def restore_state(self, path: str, timeout_s: float = 60.0) -> int | None:
        """Load a state ``save_state`` wrote (on resume, before the first request); returns its step."""
        import ray

        self.pending.clear()
        self.peeked.clear()
        self.asked_until = -1
        step: int = ray.get(self.actor.restore_bytes.remote(Path(path).read_bytes()), timeout=timeout_s)
        return step
