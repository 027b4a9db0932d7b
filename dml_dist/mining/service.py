"""The mining service: a Ray actor that owns the class bank and picks each batch's classes.

Training publishes the class embeddings it computed anyway (``publish``, fire and forget) and
asks for the classes of a future step (``next_classes``). The client asks two steps ahead
(step t + 2 while step t trains, ``mining/client.py``), so the classes of step t + 1 are known
while step t trains and the loader decodes them meanwhile, as it does for random classes.

Determinism (a resumed run draws the same batches): the answer for step t is a pure function of
(seed, t, the service's state), where the bank it reads holds exactly the publishes of steps
<= t - ``PUBLISH_LAG`` (in arrival order). Later publishes wait in a queue until a request needs
them, so an answer never depends on how far the training side got when the request arrived,
only on its step. Answers already computed are kept (the last few), and a repeated request gets
the same answer. Everything (bank, queue, kept answers, graphs, counters) goes into one file
(``save``/``restore``); a service restored from the file at a step boundary answers as the
uninterrupted one does (``tests/unit/test_mining.py``).

What an answer holds (``next_classes``): the classes; ``mined`` (chosen through the bank) or
random with a ``reason`` (``warmup``: before ``warmup_steps`` or ``warmup_coverage``;
``graph_pending``: a large bank's first graph is not due yet; ``rule``: rule ``random``); the
``rule``; the ``hard_share`` in force; the selection time; the bank's refresh age; how hard the
batch is by the bank (``negative_similarity``: mean similarity of each chosen class to its
closest chosen class); ``staleness_at_selection_mean``/``_max``: steps since the classes the
rule relied on (neighbours, greedy picks) were last refreshed; and, every ``refresh_every``
steps, the stale classes that rank 0 re-embeds (``mining/refresh.py``).

Selection rules (``mining.rule``), measured in ``docs/results/mining.md``:
- ``seed_neighbours``: random seeds, each with ``group_size - 1`` neighbours sampled by
  softmax(similarity / temperature) among its ``top_k`` nearest (``selection.py``).
- ``greedy``: Sohn's chain, each class the hardest for the chosen ones. Kept under its own name;
  it lowers held-out Recall@1 on every set measured (0.814 against 0.891 random on the
  quickstart): the chain collapses a batch into one cluster of confusable classes.
- ``random``: the service answers random classes (the baseline, with the service running).
A schedule sets the mined share: 0 before ``warmup_steps``, then rising linearly over
``ramp_steps`` to 1 - ``random_share``.

Large banks: at or above ``exact_below_classes`` the search runs on a kNN graph of the classes
(``mining/graph.py``). A graph is snapshotted from the bank at every multiple of
``graph_rebuild_steps`` R and built in a background thread; the answer for step t uses the
newest graph whose snapshot step is <= t - PUBLISH_LAG - R, waiting for its thread if it is
still running. The graph an answer uses is thus fixed by t, not by the thread's timing.

Fault tolerance: the actor saves its state to ``checkpoint_path`` every ``save_every_steps``
steps and whenever the training side checkpoints (``save``); Ray restarts a dead actor with the
same constructor arguments, and the constructor restores that file. While it is down, the client
falls back to random classes (``mining/client.py``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from dml_dist.config import MiningConfig
from dml_dist.data.sampler import random_classes
from dml_dist.mining.bank import ClassBank
from dml_dist.mining.graph import KnnGraph, build_knn_graph
from dml_dist.mining.selection import nearest_negative_similarity, select_hard_classes, select_seed_neighbours

BANK_FILE = "mining_bank.npz"
PUBLISH_LAG = 3
"""The answer for step t reads the publishes of steps <= t - 3: the client asks for t + 2 at the
start of step t, after rank 0 published step t - 1."""
KEEP_ANSWERS = 4

log = logging.getLogger("dml_dist.mining")


class MiningService:
    """Plain class; ``start_mining_actor`` turns it into a named Ray actor."""

    def __init__(
        self,
        num_classes: int,
        dim: int,
        config: MiningConfig,
        seed: int,
        checkpoint_path: str | None = None,
    ):
        self.bank = ClassBank(num_classes, dim, config.momentum)
        self.config = config
        self.seed = seed
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.restored_step: int | None = None
        self.latest_step = 0  # newest step published (applied or queued)
        self.applied_step = -1  # the bank holds every publish of steps <= this
        self.queue: list[tuple[int, np.ndarray, np.ndarray]] = []  # publishes not applied yet, in order
        self.answers: dict[int, dict[str, Any]] = {}  # the last KEEP_ANSWERS answers, by step
        self.graphs: dict[int, KnnGraph] = {}  # by snapshot step: the one in use and the next
        self._graph_threads: dict[int, threading.Thread] = {}
        self._last_boundary = -1  # the newest multiple of graph_rebuild_steps looked at for a snapshot
        self._last_save_step = 0
        self._selection_seconds: list[float] = []
        self._num_selections = 0
        self._lock = threading.Lock()  # graph threads write self.graphs
        if self.checkpoint_path is not None and self.checkpoint_path.is_file():
            try:
                self.restore(str(self.checkpoint_path))
            except (OSError, ValueError, KeyError) as err:  # another run's file or a torn one: start empty
                log.warning("mining: cannot restore %s (%s); starting empty", self.checkpoint_path, err)
                self.bank = ClassBank(num_classes, dim, config.momentum)

    @property
    def uses_graph(self) -> bool:
        return self.bank.num_classes >= self.config.exact_below_classes

    def is_warm(self) -> bool:
        return self.bank.coverage() >= self.config.warmup_coverage

    def hard_share(self, step: int) -> float:
        """Share of step's classes the rule mines: 0 in warm-up, then a linear ramp to 1 - random_share."""
        cfg = self.config
        if cfg.rule == "random" or step < cfg.warmup_steps:
            return 0.0
        ramp = 1.0 if cfg.ramp_steps == 0 else min(1.0, (step - cfg.warmup_steps + 1) / cfg.ramp_steps)
        return (1.0 - cfg.random_share) * ramp

    # ------------------------------------------------------------------ training-side calls
    def publish(self, step: int, class_ids: np.ndarray, emb_MD: np.ndarray) -> None:
        """Queue a step's class (or sample) embeddings; they enter the bank when an answer needs them."""
        class_ids = np.asarray(class_ids, dtype=np.int64)
        emb_MD = np.asarray(emb_MD, dtype=np.float32)
        if class_ids.shape[0] != emb_MD.shape[0]:
            raise ValueError(f"mining: {class_ids.shape[0]} class ids for {emb_MD.shape[0]} embeddings")
        self.queue.append((int(step), class_ids, emb_MD))
        self.latest_step = max(self.latest_step, int(step))
        every = self.config.save_every_steps
        if self.checkpoint_path is not None and every > 0 and self.latest_step - self._last_save_step >= every:
            self.save(str(self.checkpoint_path))

    def _apply_until(self, step: int) -> None:
        """Blend every queued publish of a step <= ``step`` into the bank, in arrival order.

        Publishes of a step <= applied_step that arrive late (they should not) are applied at the
        next call, in order. Crossing a multiple of graph_rebuild_steps snapshots the bank for a graph.
        """
        if step <= self.applied_step and not any(s <= step for s, _, _ in self.queue):
            return
        keep: list[tuple[int, np.ndarray, np.ndarray]] = []
        for s, ids, emb in self.queue:
            if s > step:
                keep.append((s, ids, emb))
                continue
            self._maybe_snapshot(before=s)
            self.bank.update(s, ids, emb)
        self.queue = keep
        self._maybe_snapshot(before=step + 1)
        self.applied_step = max(self.applied_step, step)

    def _maybe_snapshot(self, before: int) -> None:
        """Start a graph from the bank as it is before the publishes of step ``before`` enter it.

        The boundary is the newest multiple of R below ``before`` (the bank then holds every
        publish <= it). Each boundary is looked at once; the bank must be warm to be snapshotted.
        """
        every = self.config.graph_rebuild_steps
        if not self.uses_graph or every <= 0:
            return
        boundary = ((before - 1) // every) * every
        if boundary <= self._last_boundary:
            return
        self._last_boundary = boundary
        if not self.is_warm():
            return
        emb, seen = self.bank.embeddings.copy(), self.bank.seen.copy()
        thread = threading.Thread(target=self._build_graph, args=(emb, seen, boundary), daemon=True)
        self._graph_threads[boundary] = thread
        thread.start()

    def _build_graph(self, emb_CD: np.ndarray, seen_C: np.ndarray, step: int) -> None:
        graph = build_knn_graph(emb_CD, self.config.num_neighbours, eligible=seen_C, step=step, seed=self.seed)
        with self._lock:
            self.graphs[step] = graph

    def _graph_for(self, step: int) -> KnnGraph | None:
        """The newest graph snapshotted at or before step - PUBLISH_LAG - R (waits for its thread)."""
        limit = step - PUBLISH_LAG - self.config.graph_rebuild_steps
        due = [s for s in set(self.graphs) | set(self._graph_threads) if s <= limit]
        if not due:
            return None
        snap = max(due)
        thread = self._graph_threads.get(snap)
        if thread is not None:
            thread.join()
        for old in [s for s in self.graphs if s < snap]:  # older graphs are never used again
            self.graphs.pop(old, None)
            self._graph_threads.pop(old, None)
        return self.graphs.get(snap)

    def next_classes(self, step: int, n: int) -> dict[str, Any]:
        """Classes for ``step`` and how they were chosen (for metrics); see the module docstring."""
        kept = self.answers.get(step)
        if kept is not None and len(kept["classes"]) == n:
            return kept
        started = time.perf_counter()
        self._apply_until(step - PUBLISH_LAG)
        cfg = self.config
        share = self.hard_share(step)
        graph = self._graph_for(step) if self.uses_graph else None
        seen = self.bank.seen
        trusted = seen
        if cfg.fresh_within_steps > 0:
            trusted = seen & (self.bank.last_step >= step - cfg.fresh_within_steps)
        reason = None
        if cfg.rule == "random":
            reason = "rule"
        elif share == 0.0 or not self.is_warm() or not trusted.any():
            reason = "warmup"
        elif self.uses_graph and graph is None:
            reason = "graph_pending"
        selection_seed = self.seed * 1_000_003 + step
        neighbours = graph.neighbours if graph is not None else None
        relied = np.zeros(n, dtype=bool)
        if reason is not None:
            chosen = np.asarray(random_classes(self.seed, step, self.bank.num_classes, n), dtype=np.int64)
        elif cfg.rule == "greedy":
            chosen = select_hard_classes(
                self.bank.embeddings,
                n,
                seed=selection_seed,
                eligible=trusted,
                random_share=1.0 - share,
                neighbours=neighbours,
            )
            relied[1 : n - int(round(n * (1.0 - share)))] = True  # every greedy pick after the first
        else:
            chosen, relied = select_seed_neighbours(
                self.bank.embeddings,
                n,
                seed=selection_seed,
                eligible=trusted,
                group_size=cfg.group_size,
                hard_share=share,
                top_k=cfg.top_k,
                temperature=cfg.temperature,
                neighbours=neighbours,
            )
        selection_seconds = time.perf_counter() - started
        self._selection_seconds = [*self._selection_seconds[-99:], selection_seconds]
        self._num_selections += 1
        hardness = nearest_negative_similarity(self.bank.embeddings, chosen[seen[chosen]])
        age = self.bank.refresh_age(self.applied_step)
        relied_seen = chosen[relied & seen[chosen]]
        staleness = step - self.bank.last_step[relied_seen]
        answer: dict[str, Any] = {
            "classes": [int(c) for c in chosen],
            "mined": reason is None,
            "rule": cfg.rule,
            "hard_share": share if reason is None else 0.0,
            "selection_seconds": selection_seconds,
            "refresh_age_max": age["max"],
            "refresh_age_mean": age["mean"],
            "staleness_at_selection_mean": float(staleness.mean()) if staleness.size else None,
            "staleness_at_selection_max": float(staleness.max()) if staleness.size else None,
            "coverage": self.bank.coverage(),
            "negative_similarity": None if np.isnan(hardness) else hardness,
            "graph_step": graph.step if graph is not None else None,
        }
        if reason is not None:
            answer["reason"] = reason
        every = cfg.refresh_every
        if every > 0 and step > 0 and step % every == 0:
            answer["stale_classes"] = self.stale_classes(step, cfg.refresh_after_steps, cfg.refresh_max_classes)
        self.answers[step] = answer
        for old in sorted(self.answers)[:-KEEP_ANSWERS]:
            del self.answers[old]
        return answer

    def stale_classes(self, step: int, after_steps: int, max_count: int) -> list[int]:
        """Classes not refreshed for ``after_steps`` steps as of ``step`` (oldest first)."""
        return [int(c) for c in self.bank.stale_classes(step, after_steps, max_count)]

    def wait_for_graph(self, timeout_s: float | None = None) -> bool:
        """Block until running graph builds are done (tests, benchmarks); True when a graph exists."""
        for thread in list(self._graph_threads.values()):
            thread.join(timeout_s)
        return bool(self.graphs)

    # ------------------------------------------------------------------ state
    def save(self, path: str | None = None) -> str:
        """Write everything a resume needs to ``path`` (default: the checkpoint path), atomically.

        One ``.npz``: the bank, the queued publishes, the kept answers, the graphs (in use and
        next, after waiting for running builds) and the counters. Returns the path.
        """
        target = Path(path) if path else self.checkpoint_path
        if target is None:
            raise ValueError("mining: save() needs a path (the service has no checkpoint path)")
        self.wait_for_graph()
        arrays: dict[str, Any] = {
            "latest_step": self.latest_step,
            "applied_step": self.applied_step,
            "num_selections": self._num_selections,
            "last_boundary": self._last_boundary,
            "queue_steps": np.asarray([s for s, _, _ in self.queue], dtype=np.int64),
            "queue_sizes": np.asarray([ids.size for _, ids, _ in self.queue], dtype=np.int64),
            "queue_ids": _concat([ids for _, ids, _ in self.queue], (0,), np.int64),
            "queue_emb": _concat([emb for _, _, emb in self.queue], (0, self.bank.embeddings.shape[1]), np.float32),
            "answer_steps": np.asarray(sorted(self.answers), dtype=np.int64),
            "answers_json": np.asarray(_dumps([self.answers[s] for s in sorted(self.answers)])),
            "graph_steps": np.asarray(sorted(self.graphs), dtype=np.int64),
        }
        for s in sorted(self.graphs):
            graph = self.graphs[s]
            arrays[f"graph_{s}"] = graph.neighbours.astype(np.int32)
            arrays[f"graph_{s}_meta"] = np.asarray(
                _dumps({"build_seconds": graph.build_seconds, "method": graph.method})
            )
        self.bank.save(target, **arrays)
        self._last_save_step = self.latest_step
        return str(target)

    def restore(self, path: str) -> int:
        """Load ``save``'s file (a bank-only file of an older version too); returns the step restored to."""
        extra = self.bank.load(path)
        self.latest_step = int(extra.get("latest_step", int(self.bank.last_step.max())))
        self.applied_step = int(extra.get("applied_step", self.latest_step))
        self._num_selections = int(extra.get("num_selections", 0))
        self._last_boundary = int(extra.get("last_boundary", -1))
        self.queue = []
        if "queue_steps" in extra:
            offsets = np.concatenate([[0], np.cumsum(extra["queue_sizes"])])
            for i, s in enumerate(extra["queue_steps"].tolist()):
                lo, hi = offsets[i], offsets[i + 1]
                self.queue.append((int(s), extra["queue_ids"][lo:hi].copy(), extra["queue_emb"][lo:hi].copy()))
        self.answers = {}
        if "answers_json" in extra:
            import json

            for s, answer in zip(extra["answer_steps"].tolist(), json.loads(str(extra["answers_json"])), strict=True):
                self.answers[int(s)] = answer
        self.graphs, self._graph_threads = {}, {}
        if "graph_steps" in extra:
            import json

            for s in extra["graph_steps"].tolist():
                meta = json.loads(str(extra[f"graph_{s}_meta"]))
                neighbours = extra[f"graph_{s}"].astype(np.int64)
                self.graphs[int(s)] = KnnGraph(neighbours, int(s), float(meta["build_seconds"]), str(meta["method"]))
        self._last_save_step = self.latest_step
        self.restored_step = self.latest_step
        return self.latest_step

    def state_bytes(self) -> bytes:
        """``save``'s file as bytes: a checkpoint taken on another node gets the state through Ray,
        not through a path on the actor's node."""
        with tempfile.TemporaryDirectory(prefix="dml-dist-mining-") as scratch:
            path = Path(scratch) / "state.npz"
            self.save(str(path))
            return path.read_bytes()

    def restore_bytes(self, data: bytes) -> int:
        """Load the bytes ``state_bytes`` returned; returns the step restored to."""
        with tempfile.TemporaryDirectory(prefix="dml-dist-mining-") as scratch:
            path = Path(scratch) / "state.npz"
            path.write_bytes(data)
            return self.restore(str(path))

    def stats(self) -> dict[str, Any]:
        """What the service has been doing (for reports, tests and debugging)."""
        age = self.bank.refresh_age(self.applied_step)
        times = self._selection_seconds
        graph = self.graphs[max(self.graphs)] if self.graphs else None
        return {
            "pid": os.getpid(),
            "rule": self.config.rule,
            "latest_step": self.latest_step,
            "applied_step": self.applied_step,
            "queued_publishes": len(self.queue),
            "coverage": self.bank.coverage(),
            "warm": self.is_warm(),
            "refresh_age_max": age["max"],
            "refresh_age_mean": age["mean"],
            "selections": self._num_selections,
            "selection_seconds_mean": float(np.mean(times)) if times else None,
            "selection_seconds_max": float(np.max(times)) if times else None,
            "selection": "graph" if self.uses_graph else "exact",
            "graph_step": graph.step if graph else None,
            "graph_build_seconds": graph.build_seconds if graph else None,
            "graph_method": graph.method if graph else None,
            "bank_bytes": int(self.bank.embeddings.nbytes + self.bank.last_step.nbytes),
            "restored_step": self.restored_step,
            "checkpoint_path": str(self.checkpoint_path) if self.checkpoint_path else None,
        }


def _concat(parts: list[np.ndarray], empty_shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty_shape, dtype=dtype)


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value)


def mining_actor_name(job_name: str) -> str:
    return f"dml-dist-mining-{job_name}"


def start_mining_actor(
    job_name: str,
    num_classes: int,
    dim: int,
    config: MiningConfig,
    seed: int,
    checkpoint_path: str | None = None,
) -> Any:
    """Start the job's named mining actor, restarted by Ray when it dies (restoring its state from
    ``checkpoint_path``). No CPU is reserved: it must never starve the workers."""
    import ray

    actor_cls = ray.remote(num_cpus=0, max_restarts=-1)(MiningService)
    return actor_cls.options(name=mining_actor_name(job_name)).remote(num_classes, dim, config, seed, checkpoint_path)
