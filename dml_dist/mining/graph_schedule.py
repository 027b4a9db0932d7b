"""Which kNN graph of the classes a mining answer searches on, and its background builds.

Large banks (at or above ``mining.exact_below_classes`` classes) are searched on a kNN graph of
the classes (``mining/graph.py``). The bank is snapshotted at every multiple of
``graph_rebuild_steps`` R, and the graph of each snapshot is built in a background thread, never
inside a selection. The answer for step t uses the newest graph whose snapshot step is
<= t - ``PUBLISH_LAG`` - R (``mining/service.py``), waiting for its thread if it is still running: the graph an answer
uses is fixed by t, not by the thread's timing, so answers stay a pure function of (seed, step,
state). Older graphs are dropped once a newer one is in use.
"""

from __future__ import annotations

import threading

import numpy as np

from dml_dist.mining.bank import ClassBank
from dml_dist.mining.graph import KnnGraph, build_knn_graph


class GraphSchedule:
    """The graphs by snapshot step (the one in use and the next) and their build threads."""

    def __init__(self, rebuild_steps: int, num_neighbours: int, seed: int):
        self.rebuild_steps = rebuild_steps
        self.num_neighbours = num_neighbours
        self.seed = seed
        self.graphs: dict[int, KnnGraph] = {}
        self.last_boundary = -1  # the newest multiple of rebuild_steps looked at for a snapshot
        self._threads: dict[int, threading.Thread] = {}
        self._lock = threading.Lock()  # build threads write self.graphs

    def maybe_snapshot(self, bank: ClassBank, before: int, warm: bool) -> None:
        """Start a graph from ``bank`` as it is before the publishes of step ``before`` enter it.

        The boundary is the newest multiple of R below ``before`` (the bank then holds every
        publish <= it). Each boundary is looked at once; the bank must be ``warm`` to be snapshotted.
        """
        every = self.rebuild_steps
        if every <= 0:
            return
        boundary = ((before - 1) // every) * every
        if boundary <= self.last_boundary:
            return
        self.last_boundary = boundary
        if not warm:
            return
        emb, seen = bank.embeddings.copy(), bank.seen.copy()
        thread = threading.Thread(target=self._build, args=(emb, seen, boundary), daemon=True)
        self._threads[boundary] = thread
        thread.start()

    def _build(self, emb_CD: np.ndarray, seen_C: np.ndarray, step: int) -> None:
        graph = build_knn_graph(emb_CD, self.num_neighbours, eligible=seen_C, step=step, seed=self.seed)
        with self._lock:
            self.graphs[step] = graph

    def graph_for(self, limit: int) -> KnnGraph | None:
        """The newest graph snapshotted at or before step ``limit`` (waits for its thread)."""
        due = [s for s in set(self.graphs) | set(self._threads) if s <= limit]
        if not due:
            return None
        snap = max(due)
        thread = self._threads.get(snap)
        if thread is not None:
            thread.join()
        for old in [s for s in self.graphs if s < snap]:  # older graphs are never used again
            self.graphs.pop(old, None)
            self._threads.pop(old, None)
        return self.graphs.get(snap)

    def wait(self) -> None:
        """Block until running builds are done (before saving the graphs)."""
        for thread in list(self._threads.values()):
            thread.join()

    def newest(self) -> KnnGraph | None:
        return self.graphs[max(self.graphs)] if self.graphs else None

    def replace(self, graphs: dict[int, KnnGraph], last_boundary: int) -> None:
        """Take restored graphs (no build is running after a restore)."""
        self.graphs, self._threads, self.last_boundary = graphs, {}, last_boundary
