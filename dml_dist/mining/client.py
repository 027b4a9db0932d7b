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
import json
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

    def state_dict(self) -> dict[str, Any] | None:
        """The service's state for a checkpoint (None: random classes have no state)."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class MiningClient(RandomClasses):
    """Rank 0's handle on the mining actor, with a bounded wait and a random fallback."""

    def __init__(self, actor: Any, timeout_s: float, seed: int, num_classes: int, n: int):
        super().__init__(seed, num_classes, n)
        self.actor = actor
        self.timeout_s = timeout_s
        self.pending: dict[int, Any] = {}
        self.resolved: dict[int, dict[str, Any]] = {}  # answers taken at a checkpoint, or restored

    def request(self, step: int) -> None:
        if step in self.resolved:
            return
        try:
            self.pending[step] = self.actor.next_classes.remote(step, self.n)
        except Exception:  # a dead actor handle raises on submit; the step falls back
            self.pending.pop(step, None)

    def classes_for(self, step: int) -> dict[str, Any]:
        import ray

        if step in self.resolved:
            return self.resolved.pop(step)
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

    def state_dict(self) -> dict[str, Any] | None:
        """The service's state and the answer for the next step, for a checkpoint taken after
        ``step`` steps.

        The answer for step t is computed before step t - 1's publish reaches the service
        (requests go out one step ahead), so a service restored from this state, which holds that
        publish, would answer step t differently. The answer is therefore resolved now and saved:
        a resumed run uses it for its first step and asks the service from the next one on.
        """
        import ray

        next_step = max(self.pending, default=None)
        answer = self.classes_for(next_step) if next_step is not None else None
        if next_step is not None and answer is not None:
            self.resolved[next_step] = answer
        service: dict[str, Any] = ray.get(self.actor.state_dict.remote(), timeout=120)
        return {"service": service, "next_answer": json.dumps({"step": next_step, "answer": answer}, default=_plain)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put a checkpoint's service state back, and its saved answer for the next step."""
        import ray

        ray.get(self.actor.load_state_dict.remote(state["service"]), timeout=120)
        saved = json.loads(state["next_answer"])
        if saved["step"] is not None and saved["answer"] is not None:
            self.resolved[int(saved["step"])] = saved["answer"]

    def save_bank(self, path: str) -> None:
        """Ask the service to save its bank to ``path`` (fire and forget; a restart restores it)."""
        with contextlib.suppress(Exception):
            self.actor.save.remote(path)


def _plain(value: Any) -> Any:
    """numpy scalars and arrays in an answer, as JSON numbers and lists."""
    return value.tolist() if hasattr(value, "tolist") else str(value)
