"""The mining service: owns the class bank and answers which classes each batch holds.

Training publishes the class embeddings it computed anyway (``publish``, fire and forget) and
asks for the classes of a future step (``next_classes``). The client asks two steps ahead
(step t + 2 while step t trains, ``mining/client.py``), so the classes of step t + 1 are known
while step t trains and the loader decodes them meanwhile, as it does for random classes.
Class ids here are ``bank_pos`` (``mining/class_ids.py``). ``mining/actor.py`` runs the service
as a named Ray actor; its state file is ``mining/service_state.py``.

Determinism (a resumed run draws the same batches): the answer for step t is a pure function of
(seed, t, the service's state), where the bank it reads holds exactly the publishes of steps
<= t - ``PUBLISH_LAG`` (in arrival order). Later publishes wait in a queue until a request needs
them, so an answer never depends on how far the training side got when the request arrived,
only on its step. Answers already computed are kept (the last few), and a repeated request gets
the same answer. The whole state (bank, queue, kept answers, graphs, counters) goes into one
file (``save``/``restore``).

An answer (``MiningAnswer``, ``mining/answer.py``) holds the classes, whether they were mined
(chosen through the bank) or random and why (``warmup``: before ``warmup_steps`` or
``warmup_coverage``; ``graph_pending``: a large bank's first graph is not due yet; ``rule``:
rule ``random``), the rule, the hard share in force, the bank's figures, and every
``refresh_every`` steps the stale classes that the training side re-embeds (``train/refresh.py``).

Selection rules (``mining.rule``) and the mined-share schedule: ``mining/__init__.py``. Large
banks are searched on a kNN graph (``mining/graph_schedule.py`` says which graph an answer uses).

Fault tolerance: the service saves its state to ``checkpoint_path`` every ``save_every_steps``
steps and whenever the training side checkpoints (``save``); Ray restarts a dead actor with the
same constructor arguments, and the constructor restores that file. While it is down, the client
falls back to random classes (``mining/client.py``). A file that cannot be restored (torn by a
crash, corrupt, another run's) is not fatal, or Ray would restart the actor into the same error
for ever: the service starts fresh with a warning, counted in ``stats()["fresh_starts"]``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from dml_dist.config import MiningConfig
from dml_dist.data.sampler import random_classes
from dml_dist.mining import service_state
from dml_dist.mining.answer import MiningAnswer
from dml_dist.mining.bank import ClassBank
from dml_dist.mining.diagnostics import DiagnosticsWindow
from dml_dist.mining.graph_schedule import GraphSchedule
from dml_dist.mining.hardness import nearest_negative_similarity
from dml_dist.mining.partition import PartitionDraw, PartitionSampler
from dml_dist.mining.partition_rule import observe_window, partition_draw
from dml_dist.mining.selection import select_hard_classes, select_seed_neighbours

PUBLISH_LAG = 3
"""The answer for step t reads the publishes of steps <= t - 3: the client asks for t + 2 at the
start of step t, after rank 0 published step t - 1."""
KEEP_ANSWERS = 4

log = logging.getLogger("dml_dist.mining")


class MiningService:
    """Plain class; ``mining/actor.py`` turns it into a named Ray actor."""

    def __init__(
        self,
        num_classes: int,
        dim: int,
        config: MiningConfig,
        seed: int,
        checkpoint_path: str | None = None,
    ):
        self.config = config
        self.seed = seed
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.fresh_starts = 0  # state files that could not be restored
        self._start_empty(num_classes, dim)
        if self.checkpoint_path is not None and self.checkpoint_path.is_file():
            try:
                self.restore(str(self.checkpoint_path))
            except Exception as err:  # torn, corrupt or another run's: any failure means the file is unusable
                log.warning(
                    "mining: cannot restore %s (%s: %s); the service starts fresh",
                    self.checkpoint_path,
                    type(err).__name__,
                    err,
                )
                self.fresh_starts += 1
                self._start_empty(num_classes, dim)  # a failed restore may have set part of the state

    def _start_empty(self, num_classes: int, dim: int) -> None:
        """The state of a service that has seen nothing."""
        self.bank = ClassBank(num_classes, dim, self.config.momentum)
        self.restored_step: int | None = None
        self.latest_step = 0  # newest step published (applied or queued)
        self.applied_step = -1  # the bank holds every publish of steps <= this
        self.queue: list[tuple[int, np.ndarray, np.ndarray]] = []  # publishes not applied yet, in order
        self.answers: dict[int, MiningAnswer] = {}  # the last KEEP_ANSWERS answers, by step
        self.graph_schedule = GraphSchedule(self.config.graph_rebuild_steps, self.config.num_neighbours, self.seed)
        self.partition = PartitionSampler(num_classes, self.seed)
        self.diagnostics = DiagnosticsWindow(num_classes)
        self.num_selections = 0
        self._last_save_step = 0
        self._selection_seconds: list[float] = []

    @property
    def uses_graph(self) -> bool:
        """A large bank, and a rule that searches neighbour lists (partition and a candidate pool do not)."""
        cfg = self.config
        searches = cfg.rule == "greedy" or (cfg.rule == "seed_neighbours" and cfg.candidate_pool == 0)
        return searches and self.bank.num_classes >= cfg.exact_below_classes

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
    def publish(self, step: int, bank_pos: np.ndarray, emb_MD: np.ndarray) -> None:
        """Queue a step's class (or sample) embeddings [M, D] of classes ``bank_pos`` [M]; they
        enter the bank when an answer needs them."""
        bank_pos = np.asarray(bank_pos, dtype=np.int64)
        emb_MD = np.asarray(emb_MD, dtype=np.float32)
        if bank_pos.shape[0] != emb_MD.shape[0]:
            raise ValueError(f"mining: {bank_pos.shape[0]} class ids for {emb_MD.shape[0]} embeddings")
        self.queue.append((int(step), bank_pos, emb_MD))
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
        if self.uses_graph:
            self.graph_schedule.maybe_snapshot(self.bank, before, self.is_warm())

    def next_classes(self, step: int, n: int) -> MiningAnswer:
        """The N classes (``bank_pos``) of ``step`` and how they were chosen; see the module docstring."""
        kept = self.answers.get(step)
        if kept is not None and len(kept.classes) == n:
            return kept
        started = time.perf_counter()
        self._apply_until(step - PUBLISH_LAG)
        cfg = self.config
        share = self.hard_share(step)
        limit = step - PUBLISH_LAG - cfg.graph_rebuild_steps
        graph = self.graph_schedule.graph_for(limit) if self.uses_graph else None
        seen = self.bank.seen
        fresh = self.bank.last_step >= step - cfg.fresh_within_steps if cfg.fresh_within_steps > 0 else True
        trusted = seen & fresh
        reason = None
        draw: PartitionDraw | None = None
        if cfg.rule == "partition":
            draw, reason = partition_draw(self.partition, cfg, step, n, self.bank.embeddings, trusted, self.is_warm())
        elif cfg.rule == "random":
            reason = "rule"
        elif share == 0.0 or not self.is_warm() or not trusted.any():
            reason = "warmup"
        elif self.uses_graph and graph is None:
            reason = "graph_pending"
        if draw is not None:
            chosen, relied = draw.classes, draw.clustered
            share = float(relied.mean())
        elif reason is not None:
            chosen = np.asarray(random_classes(self.seed, step, self.bank.num_classes, n), dtype=np.int64)
            relied = np.zeros(n, dtype=bool)
        else:
            chosen, relied = self._select(step, n, share, trusted, graph.neighbours if graph is not None else None)
        window = observe_window(self.diagnostics, self.bank, cfg.similarity_cap, chosen, reason is None, n, draw)
        self._selection_seconds = [*self._selection_seconds[-99:], selection_seconds := time.perf_counter() - started]
        self.num_selections += 1
        hardness = nearest_negative_similarity(self.bank.embeddings, chosen[seen[chosen]])
        age = self.bank.refresh_age(self.applied_step)
        relied_seen = chosen[relied & seen[chosen]]
        staleness = step - self.bank.last_step[relied_seen]
        every = cfg.refresh_every
        due = every > 0 and step > 0 and step % every == 0
        answer = MiningAnswer(
            classes=[int(c) for c in chosen],
            mined=reason is None,
            rule=cfg.rule,
            hard_share=share if reason is None else 0.0,
            reason=reason,
            selection_seconds=selection_seconds,
            refresh_age_max=age["max"],
            refresh_age_mean=age["mean"],
            staleness_at_selection_mean=float(staleness.mean()) if staleness.size else None,
            staleness_at_selection_max=float(staleness.max()) if staleness.size else None,
            negative_similarity=None if np.isnan(hardness) else hardness,
            graph_step=graph.step if graph is not None else None,
            cluster_size=draw.cluster_size if draw is not None else None,
            epoch=draw.epoch if draw is not None else None,
            epoch_distinct_classes=window["epoch_distinct_classes"],
            visit_gini=window["visit_gini"],
            cap_violation_share=window["cap_violation_share"],
            stale_classes=self.stale_classes(step, cfg.refresh_after_steps, cfg.refresh_max_classes) if due else [],
        )
        self.answers[step] = answer
        for old in sorted(self.answers)[:-KEEP_ANSWERS]:
            del self.answers[old]
        return answer

    def _select(
        self, step: int, n: int, share: float, trusted: np.ndarray, neighbours: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The rule's N classes and [N] bool: which picks relied on the bank (for staleness)."""
        selection_seed = self.seed * 1_000_003 + step
        if self.config.rule == "greedy":
            chosen = select_hard_classes(
                self.bank.embeddings,
                n,
                seed=selection_seed,
                eligible=trusted,
                random_share=1.0 - share,
                neighbours=neighbours,
            )
            relied = np.zeros(n, dtype=bool)
            relied[1 : n - int(round(n * (1.0 - share)))] = True  # every greedy pick after the first
            return chosen, relied
        cfg = self.config
        return select_seed_neighbours(
            self.bank.embeddings,
            n,
            seed=selection_seed,
            eligible=trusted,
            group_size=cfg.group_size,
            hard_share=share,
            top_k=cfg.top_k,
            temperature=cfg.temperature,
            neighbours=neighbours,
            similarity_cap=cfg.similarity_cap,
            candidate_pool=cfg.candidate_pool,
        )

    def stale_classes(self, step: int, after_steps: int, max_count: int) -> list[int]:
        """Classes (``bank_pos``) not refreshed for ``after_steps`` steps as of ``step`` (oldest first)."""
        return [int(c) for c in self.bank.stale_classes(step, after_steps, max_count)]

    # ------------------------------------------------------------------ state (mining/service_state.py)
    def save(self, path: str | None = None) -> str:
        """Write the whole state to ``path`` (default: the checkpoint path), atomically; returns the path."""
        target = Path(path) if path else self.checkpoint_path
        if target is None:
            raise ValueError("mining: save() needs a path (the service has no checkpoint path)")
        service_state.save_state(self, target)
        self._last_save_step = self.latest_step
        return str(target)

    def restore(self, path: str) -> int:
        """Load ``save``'s file (a bank-only file of an older version too); returns the step restored to."""
        self.latest_step = service_state.restore_state(self, path)
        self._last_save_step = self.restored_step = self.latest_step
        return self.latest_step

    def state_bytes(self) -> bytes:
        """``save``'s file as bytes: a checkpoint taken on another node gets the state through Ray."""
        return service_state.state_bytes(self)

    def restore_bytes(self, data: bytes) -> int:
        """Load the bytes ``state_bytes`` returned; returns the step restored to."""
        step = service_state.restore_bytes(self, data)
        self._last_save_step = self.restored_step = step
        return step

    def stats(self) -> dict[str, Any]:
        """What the service has been doing (for reports, tests and debugging)."""
        age = self.bank.refresh_age(self.applied_step)
        times = self._selection_seconds
        graph = self.graph_schedule.newest()
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
            "selections": self.num_selections,
            "selection_seconds_mean": float(np.mean(times)) if times else None,
            "selection_seconds_max": float(np.max(times)) if times else None,
            "selection": "graph" if self.uses_graph else "exact",
            "graph_step": graph.step if graph else None,
            "graph_build_seconds": graph.build_seconds if graph else None,
            "graph_method": graph.method if graph else None,
            "bank_bytes": int(self.bank.embeddings.nbytes + self.bank.last_step.nbytes),
            "restored_step": self.restored_step,
            "partition_epoch": self.partition.epoch if self.config.rule == "partition" else None,
            **self.diagnostics.figures(self.config.similarity_cap),
            "fresh_starts": self.fresh_starts,
            "checkpoint_path": str(self.checkpoint_path) if self.checkpoint_path else None,
        }
