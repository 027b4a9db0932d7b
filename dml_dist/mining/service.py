"""The mining service: a Ray actor that owns the class bank and picks the next batch's classes.

Training publishes the class embeddings it computed anyway (``publish``, fire and forget) and
asks for the classes of a future step (``next_classes``). Ray runs an actor's calls in order,
so a request sent at the start of step t sees every publish up to step t - 1 and is computed
while step t trains.

What an answer holds: the classes; whether they were mined (until ``warmup_coverage`` of the
classes have an embedding the answer is random: a greedy pick among a few seen classes would
only repeat them); the selection time, the bank's refresh age and how hard the batch is (mean
similarity of each chosen class to its closest chosen class, by the bank); and, every
``refresh_every`` steps, the stale classes (not refreshed for ``refresh_after_steps``) that rank
0 re-embeds and publishes (``mining/refresh.py``).

Selection is exact below ``exact_below_classes`` classes. Above, it runs on a kNN graph of the
classes (``mining/graph.py``) that a background thread rebuilds whenever the bank is
``graph_rebuild_steps`` steps newer than the graph; numpy and faiss release the GIL, so the
actor keeps answering while it builds. Until the first graph exists, large banks answer with
random classes.

Fault tolerance: the actor saves its bank to ``checkpoint_path`` every ``save_every_steps``
steps and whenever the training side checkpoints (``save``); Ray restarts a dead actor with
the same constructor arguments, and the constructor restores the bank from that file. While it
is down, the client falls back to random classes (``mining/client.py``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from dml_dist.config.schema import MiningConfig
from dml_dist.data.sampler import random_classes
from dml_dist.mining.bank import ClassBank
from dml_dist.mining.graph import KnnGraph, build_knn_graph
from dml_dist.mining.selection import nearest_negative_similarity, select_hard_classes

BANK_FILE = "mining_bank.npz"

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
        self.latest_step = 0
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.restored_step: int | None = None
        self.graph: KnnGraph | None = None
        self._graph_thread: threading.Thread | None = None
        self._last_save_step = 0
        self._selection_seconds: list[float] = []
        self._num_selections = 0
        if self.checkpoint_path is not None and self.checkpoint_path.is_file():
            self._restore(self.checkpoint_path)

    def _restore(self, path: Path) -> None:
        try:
            extra = self.bank.load(path)
        except (OSError, ValueError, KeyError) as err:  # a bank of another run or a torn file: start empty
            log.warning("mining: cannot restore the bank from %s (%s); starting empty", path, err)
            self.bank = ClassBank(self.bank.num_classes, self.bank.embeddings.shape[1], self.config.momentum)
            return
        self.latest_step = int(extra.get("latest_step", int(self.bank.last_step.max())))
        self._last_save_step = self.latest_step
        self.restored_step = self.latest_step
        self.maybe_rebuild_graph()

    @property
    def uses_graph(self) -> bool:
        return self.bank.num_classes >= self.config.exact_below_classes

    def is_warm(self) -> bool:
        return self.bank.coverage() >= self.config.warmup_coverage

    # ------------------------------------------------------------------ training-side calls
    def publish(self, step: int, class_ids: np.ndarray, emb_MD: np.ndarray) -> None:
        """Blend a step's class (or sample) embeddings into the bank."""
        self.bank.update(step, class_ids, emb_MD)
        self.latest_step = max(self.latest_step, step)
        self.maybe_rebuild_graph()
        every = self.config.save_every_steps
        if self.checkpoint_path is not None and every > 0 and self.latest_step - self._last_save_step >= every:
            self.save(str(self.checkpoint_path))

    def next_classes(self, step: int, n: int) -> dict[str, Any]:
        """Classes for ``step`` and how they were chosen (for metrics)."""
        started = time.perf_counter()
        graph = self.graph
        mined = self.is_warm() and (graph is not None or not self.uses_graph)
        if mined:
            classes = select_hard_classes(
                self.bank.embeddings,
                n,
                seed=self.seed * 1_000_003 + step,
                eligible=self.bank.seen,
                random_share=self.config.random_share,
                neighbours=graph.neighbours if self.uses_graph and graph is not None else None,
            ).tolist()
        else:
            classes = random_classes(self.seed, step, self.bank.num_classes, n)
        selection_seconds = time.perf_counter() - started
        self._selection_seconds = [*self._selection_seconds[-99:], selection_seconds]
        self._num_selections += 1
        chosen = np.asarray(classes, dtype=np.int64)
        hardness = nearest_negative_similarity(self.bank.embeddings, chosen[self.bank.last_step[chosen] >= 0])
        age = self.bank.refresh_age(self.latest_step)
        answer: dict[str, Any] = {
            "classes": classes,
            "mined": mined,
            "selection_seconds": selection_seconds,
            "refresh_age_max": age["max"],
            "refresh_age_mean": age["mean"],
            "coverage": self.bank.coverage(),
            "negative_similarity": None if np.isnan(hardness) else hardness,
        }
        if not mined:
            answer["reason"] = "warmup" if not self.is_warm() else "graph_pending"
        every = self.config.refresh_every
        if every > 0 and step > 0 and step % every == 0:
            answer["stale_classes"] = self.stale_classes(
                step, self.config.refresh_after_steps, self.config.refresh_max_classes
            )
        return answer

    def stale_classes(self, step: int, after_steps: int, max_count: int) -> list[int]:
        """Classes not refreshed for ``after_steps`` steps as of ``step`` (oldest first)."""
        return [int(c) for c in self.bank.stale_classes(step, after_steps, max_count)]

    # ------------------------------------------------------------------ graph
    def maybe_rebuild_graph(self, blocking: bool = False) -> bool:
        """Start a graph rebuild when due (large, warm bank; graph missing or too old)."""
        if not self.uses_graph or not self.is_warm():
            return False
        if self._graph_thread is not None and self._graph_thread.is_alive():
            return False
        if self.graph is not None and self.latest_step - self.graph.step < self.config.graph_rebuild_steps:
            return False
        snapshot = (self.bank.embeddings.copy(), self.bank.seen.copy(), self.latest_step)
        self._graph_thread = threading.Thread(target=self._build_graph, args=snapshot, daemon=True)
        self._graph_thread.start()
        if blocking:
            self._graph_thread.join()
        return True

    def wait_for_graph(self, timeout_s: float | None = None) -> bool:
        """Block until a running rebuild is done (tests, benchmarks); True when a graph exists."""
        thread = self._graph_thread
        if thread is not None:
            thread.join(timeout_s)
        return self.graph is not None

    def _build_graph(self, emb_CD: np.ndarray, seen_C: np.ndarray, step: int) -> None:
        self.graph = build_knn_graph(emb_CD, self.config.num_neighbours, eligible=seen_C, step=step, seed=self.seed)

    # ------------------------------------------------------------------ state
    def save(self, path: str | None = None) -> str:
        """Write the bank to ``path`` (default: the checkpoint path) atomically; returns the path."""
        target = Path(path) if path else self.checkpoint_path
        if target is None:
            raise ValueError("mining: save() needs a path (the service has no checkpoint path)")
        self.bank.save(target, latest_step=self.latest_step)
        self._last_save_step = self.latest_step
        return str(target)

    def state_dict(self) -> dict[str, Any]:
        return {"bank": self.bank.state_dict(), "latest_step": self.latest_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bank.load_state_dict(state["bank"])
        self.latest_step = int(state["latest_step"])
        self.graph = None
        self.maybe_rebuild_graph()

    def stats(self) -> dict[str, Any]:
        """What the service has been doing (for reports, tests and debugging)."""
        age = self.bank.refresh_age(self.latest_step)
        times = self._selection_seconds
        graph = self.graph
        return {
            "pid": os.getpid(),
            "latest_step": self.latest_step,
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
            "restored_step": self.restored_step,
            "checkpoint_path": str(self.checkpoint_path) if self.checkpoint_path else None,
        }


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
    """Start the job's named mining actor, restarted by Ray when it dies (restoring its bank from
    ``checkpoint_path``). No CPU is reserved: it must never starve the workers."""
    import ray

    actor_cls = ray.remote(num_cpus=0, max_restarts=-1)(MiningService)
    return actor_cls.options(name=mining_actor_name(job_name)).remote(num_classes, dim, config, seed, checkpoint_path)
