"""Where rank 0 gets each step's classes: the mining service, or random classes.

``ClassSource`` is what the training loop uses, whichever source it holds: ``peek(t + 1)``
tells step t + 1's classes while step t trains (the loader decodes them meanwhile),
``classes_for(t)`` returns step t's ``MiningAnswer`` (``mining/answer.py``), ``publish`` sends
the step's class embeddings, ``save_state``/``restore_state`` carry the source's state through a
checkpoint. Classes are ``bank_pos`` (``mining/class_ids.py``). ``RandomClasses`` is the source
when mining is off (uniform random classes, a pure function of (seed, step); publishing and
saving do nothing), so the loop has no ``if mining:`` branches.

``MiningClient`` keeps the service two steps ahead: ``request(t + 1)``, sent at the start of
step t, asks for steps t + 1 and t + 2 (those not asked yet). So when step t starts, the answer
for t + 1 was asked for a whole step earlier, and ``peek(t + 1)`` has it at once. The service
reads the publishes of steps <= t - 3 for step t's answer (``service.PUBLISH_LAG``), which the
two-step lead guarantees have arrived. ``classes_for(t)`` returns the answer ``peek`` got, or
waits for it at most ``timeout_s``; when the service is slow, dead or restarting it falls back
to random classes for that step and counts the fallback, as it does when the service answers
with random classes because it is not warm yet (each fallback says why: ``timeout``,
``unavailable``, ``warmup`` or ``graph_pending``). Ray restarts a dead service, which restores
its bank from the last save, so later requests are answered again. Answers may carry
``stale_classes`` for the training side to re-embed (``train/refresh.py``).

The service never fails training. A checkpoint asks it for its state for at most
``SAVE_TIMEOUT_S``; a late or failed save is skipped with a warning and counted
(``skipped_saves``): that checkpoint then holds no mining state, and a run resumed from it keeps
the service's state as it is (its batches are no longer those of the uninterrupted run). A
restore that fails on resume is skipped, warned and counted the same way.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dml_dist.data.sampler import random_classes
from dml_dist.mining.answer import MiningAnswer

SAVE_TIMEOUT_S = 30.0
"""Longest wait for the service's state at a checkpoint (or on resume) before going on without it."""


class ClassSource(Protocol):
    """What the training loop asks of a class source (rank 0's; other ranks get the broadcast)."""

    fallbacks: int
    """Steps that used random classes although mining is on."""
    skipped_saves: int
    """Checkpoints (and restores) that went on without the service's state: it was late or failed."""

    def request(self, step: int) -> None:
        """Start selecting ``step``'s classes (and the next step's) ahead of time."""

    def peek(self, step: int) -> list[int]:
        """``step``'s classes before ``classes_for(step)``, which then returns the same classes."""

    def classes_for(self, step: int) -> MiningAnswer:
        """``step``'s classes and how they were chosen."""

    def publish(self, step: int, bank_pos: np.ndarray, emb_MD: np.ndarray) -> None:
        """Send embeddings [M, D] of classes ``bank_pos`` [M] seen at ``step`` (fire and forget)."""

    def save_state(self, path: str, timeout_s: float = SAVE_TIMEOUT_S) -> str | None:
        """Write the source's state to ``path`` for a checkpoint; None when it has none (or it
        was skipped). Never raises for the service's sake."""

    def restore_state(self, path: str, timeout_s: float = SAVE_TIMEOUT_S) -> int | None:
        """Load a state ``save_state`` wrote; returns its step (None when it has none, or it was skipped)."""


class RandomClasses:
    """Uniform random classes every step (mining off)."""

    def __init__(self, seed: int, num_classes: int, n: int):
        self.seed, self.num_classes, self.n = seed, num_classes, n
        self.fallbacks = 0
        self.skipped_saves = 0

    def request(self, step: int) -> None:
        pass

    def peek(self, step: int) -> list[int]:
        return random_classes(self.seed, step, self.num_classes, self.n)

    def classes_for(self, step: int) -> MiningAnswer:
        return MiningAnswer(classes=self.peek(step))

    def publish(self, step: int, bank_pos: np.ndarray, emb_MD: np.ndarray) -> None:
        pass

    def save_state(self, path: str, timeout_s: float = SAVE_TIMEOUT_S) -> str | None:
        """Nothing to save: random classes are a pure function of (seed, step)."""
        return None

    def restore_state(self, path: str, timeout_s: float = SAVE_TIMEOUT_S) -> int | None:
        return None


class MiningClient:
    """Rank 0's handle on the mining actor, with a bounded wait and a random fallback."""

    def __init__(self, actor: Any, timeout_s: float, seed: int, num_classes: int, n: int):
        self.actor = actor
        self.timeout_s = timeout_s
        self.n = n
        self.random = RandomClasses(seed, num_classes, n)  # the fallback
        self.fallbacks = 0
        self.skipped_saves = 0
        self.pending: dict[int, Any] = {}
        self.peeked: dict[int, MiningAnswer] = {}
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
        answer = self._answer(step)
        self.peeked[step] = answer
        return list(answer.classes)

    def classes_for(self, step: int) -> MiningAnswer:
        answer = self.peeked.pop(step, None)
        for old in [s for s in self.peeked if s < step]:
            del self.peeked[old]
        return answer if answer is not None else self._answer(step)

    def _answer(self, step: int) -> MiningAnswer:
        """The service's answer for ``step`` within ``timeout_s``, else random classes (counted)."""
        import ray

        if step not in self.pending and step > self.asked_until:
            self.request(step)  # nobody asked (first step of a run): ask now
        ref = self.pending.pop(step, None)
        reason = "unavailable"  # no request could be sent
        if ref is not None:
            try:
                answer: MiningAnswer = ray.get(ref, timeout=self.timeout_s)
            except ray.exceptions.GetTimeoutError:  # slow, or restarting: never block training
                reason = "timeout"
            except Exception:  # the actor died with the request
                reason = "unavailable"
            else:
                if answer.mined or answer.reason == "rule":
                    return answer
                # The service answered with random classes (warm-up, or no graph yet).
                self.fallbacks += 1
                return answer.as_fallback(answer.reason or "warmup")
        self.fallbacks += 1
        return self.random.classes_for(step).as_fallback(reason)

    def publish(self, step: int, bank_pos: np.ndarray, emb_MD: np.ndarray) -> None:
        # Fire and forget: a lost publish only ages the bank.
        with contextlib.suppress(Exception):
            self.actor.publish.remote(step, bank_pos, emb_MD)

    def save_bank(self, path: str) -> None:
        """Ask the service to save its state to ``path`` on its node (fire and forget)."""
        with contextlib.suppress(Exception):
            self.actor.save.remote(path)

    def save_state(self, path: str, timeout_s: float = SAVE_TIMEOUT_S) -> str | None:
        """Write the service's whole state to ``path`` on this node (for a checkpoint); the state
        comes through Ray, so the actor may run on any node. A late or failed save is skipped
        (None), warned and counted: the checkpoint goes on without it."""
        import ray

        try:
            data: bytes = ray.get(self.actor.state_bytes.remote(), timeout=timeout_s)
        except Exception as err:  # dead, restarting, stuck or broken: the checkpoint must not wait or fail
            self._skip("save its state for the checkpoint", timeout_s, err)
            return None
        Path(path).write_bytes(data)
        return path

    def restore_state(self, path: str, timeout_s: float = SAVE_TIMEOUT_S) -> int | None:
        """Load a state ``save_state`` wrote (on resume, before the first request); returns its
        step, or None when the service could not take it (skipped, warned and counted)."""
        import ray

        self.pending.clear()
        self.peeked.clear()
        self.asked_until = -1
        try:
            step: int = ray.get(self.actor.restore_bytes.remote(Path(path).read_bytes()), timeout=timeout_s)
        except Exception as err:  # as in save_state: training goes on with the service's own state
            self._skip(f"restore the checkpoint's state {path}", timeout_s, err)
            return None
        return step

    def _skip(self, what: str, timeout_s: float, err: Exception) -> None:
        self.skipped_saves += 1
        reason = f"no answer within {timeout_s:g} s" if isinstance(err, TimeoutError) else type(err).__name__
        print(
            f"mining: warning: the service did not {what} ({reason}); skipped, training goes on "
            f"({self.skipped_saves} skipped so far)",
            file=sys.stderr,
            flush=True,
        )
