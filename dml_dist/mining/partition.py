"""Partition mining (``mining.rule: partition``): epochs over balanced clusters of the class centres.

Seed-and-neighbour mining visits classes unevenly (popular neighbours come back, others starve)
and, with N << C, trusts centres that are ~C / N steps old. Partition mining keeps random
classes' even coverage and still makes batches hard:

- the classes still to visit in the epoch are cut into clusters of exactly s mutually close
  classes (``clustering.py``, on the bank's unit centres); classes without a trusted centre,
  and the < s leftovers of the clustering, are singleton clusters;
- an epoch is a random permutation of these units: units are dealt s classes at a time (a
  cluster, or s singletons in their random order), N / s per batch, so every class is in
  exactly one batch of the epoch. The epoch's R classes fill ceil(R / N) batches; the last
  one's N - (R mod N) free slots are padded with random classes that are not in it (extra
  visits, not counted as the epoch's);
- s follows ``cluster_size``: 1 (plain random permutation epochs) during warm-up, then doubling
  every ``partition_double_every_steps`` steps up to the largest power of two that divides N and
  is at most min(N / 4, ``partition_max_cluster_size``);
- the classes not yet visited are re-clustered and re-dealt when s changes and every
  ``partition_recluster_steps`` steps; the new plan is used from the next batch, so coverage
  still holds (each class once per epoch) while the clusters follow the drifting bank;
- ``similarity_cap`` (< 1): no two classes whose centres have cosine above the cap share a
  batch. After dealing, a batch with such a pair swaps one of the two with a class of another
  batch where neither creates a new pair (``enforce_cap``); a pair with no such swap among
  ``CAP_TRIES`` batches stays (the service's ``cap_violation_share`` counts it). The cap is
  checked against the bank at planning time; centres that drift closer later are only counted.

``PartitionSampler`` holds the epoch (visited classes, the dealt batches, the cursor) and is
part of the service's state file, so a restored service deals the same batches. Each plan is a
pure function of (seed, planning step, the bank then, the classes left).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dml_dist.mining.clustering import balanced_clusters

CAP_TRIES = 16
"""Other batches tried for a swap that removes one class of a pair above the similarity cap."""


def cluster_size(step: int, n: int, warmup_steps: int, double_every: int, max_size: int, warm: bool = True) -> int:
    """s(t): 1 before ``warmup_steps`` (or while the bank is not ``warm``), then
    2^(1 + floor((t - warmup_steps) / double_every)) (the cap at once when double_every = 0),
    capped at the largest power of two that divides N and is <= min(N / 4, max_size)."""
    limit = min(n // 4, max_size)
    cap = 1
    while cap * 2 <= limit and n % (cap * 2) == 0:
        cap *= 2
    if step < warmup_steps or not warm or cap == 1:
        return 1
    if double_every == 0:
        return cap
    doublings = 1 + (step - warmup_steps) // double_every
    return cap if doublings >= cap.bit_length() else min(cap, 2**doublings)


@dataclass
class EpochPlan:
    """The batches dealt for the rest of an epoch, and which of their slots count."""

    classes_BN: np.ndarray
    """[B, N] int64 classes (``bank_pos``) of the batches still to answer, in order."""
    real_BN: np.ndarray
    """[B, N] bool: False for the padding of the last batch (extra visits)."""
    clustered_BN: np.ndarray
    """[B, N] bool: the class came in a cluster of size s > 1 (chosen through the bank)."""
    cluster_size: int
    step: int
    """Step the plan was dealt at."""
    cursor: int = 0
    """Batches answered from this plan."""

    @property
    def exhausted(self) -> bool:
        return self.cursor >= self.classes_BN.shape[0]


@dataclass(frozen=True)
class PartitionDraw:
    """One batch of a partition epoch."""

    classes: np.ndarray
    """[N] int64 classes (``bank_pos``)."""
    clustered: np.ndarray
    """[N] bool: came in a cluster of size s > 1."""
    real: np.ndarray
    """[N] bool: counts as the epoch's visit (False = padding of the epoch's last batch)."""
    epoch: int
    cluster_size: int
    new_epoch: bool
    """This batch is the first of its epoch."""


def deal_epoch(
    remaining: np.ndarray,
    emb_CD: np.ndarray,
    trusted_C: np.ndarray,
    n: int,
    size: int,
    cap: float,
    seed: int,
    step: int = 0,
) -> EpochPlan:
    """Cluster the ``remaining`` classes [R] into units of s, permute and deal them into batches of N.

    Trusted classes (``trusted_C`` [C] bool) are clustered by their centres (unit rows of
    ``emb_CD`` [C, D]); the others and the clustering's leftovers are singletons. With
    B = ceil(R / N) batches, the last holding L = R - (B - 1) N classes: the units are s-class
    blocks (K clusters, then singletons s at a time, L mod s singletons held back), permuted,
    N / s per batch; the held-back singletons end the last batch, which is padded to N.
    ``step`` is recorded as the plan's step.
    """
    if n % size or remaining.size == 0:
        raise ValueError(f"deal_epoch: s={size} does not divide N={n}, or no class remains")
    rng = np.random.default_rng([seed, 11])
    clusters, singletons = _units(remaining, emb_CD, trusted_C, size, seed)
    singletons = rng.permutation(singletons)
    num_batches = -(-remaining.size // n)
    held_back = (remaining.size - (num_batches - 1) * n) % size
    blocks = singletons[: singletons.size - held_back].reshape(-1, size)
    units = np.concatenate([clusters, blocks])
    is_cluster = np.arange(units.shape[0]) < clusters.shape[0]
    perm = rng.permutation(units.shape[0])
    flat = np.concatenate([units[perm].ravel(), singletons[singletons.size - held_back :]])
    clustered = np.concatenate([np.repeat(is_cluster[perm] & (size > 1), size), np.zeros(held_back, bool)])
    batches = [flat[b * n : (b + 1) * n] for b in range(num_batches)]
    flags = [clustered[b * n : (b + 1) * n] for b in range(num_batches)]
    if cap < 1.0:
        enforce_cap(batches, flags, emb_CD, cap, rng)
    last = batches[-1].size
    batches[-1] = pad_batch(batches[-1], n, emb_CD, cap, rng)
    flags[-1] = np.concatenate([flags[-1], np.zeros(n - last, bool)])
    real = np.ones((num_batches, n), dtype=bool)
    real[-1, last:] = False
    return EpochPlan(np.stack(batches), real, np.stack(flags), size, step)


def _units(
    remaining: np.ndarray, emb_CD: np.ndarray, trusted_C: np.ndarray, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(clusters [K, s] of trusted remaining classes, singletons: the rest)."""
    trusted = remaining[trusted_C[remaining]]
    if size == 1:
        return np.zeros((0, 1), dtype=np.int64), remaining.astype(np.int64)
    rows, leftovers = balanced_clusters(emb_CD[trusted], size, seed=seed)
    singletons = np.concatenate([remaining[~trusted_C[remaining]], trusted[leftovers]]).astype(np.int64)
    return trusted[rows].astype(np.int64), np.sort(singletons)


def conflicts(emb_CD: np.ndarray, classes: np.ndarray, cap: float) -> np.ndarray:
    """[M, M] bool: pairs of distinct ``classes`` [M] whose centres have cosine above ``cap``."""
    emb_MD = emb_CD[classes]
    over = (emb_MD @ emb_MD.T) > cap
    np.fill_diagonal(over, False)
    return over


def enforce_cap(
    batches: list[np.ndarray], flags: list[np.ndarray], emb_CD: np.ndarray, cap: float, rng: np.random.Generator
) -> int:
    """Swap classes between batches (in place) until no batch holds a pair above ``cap``.

    Batch by batch, the class in most pairs is swapped with a class k of another batch b' (up to
    ``CAP_TRIES`` tried, in random order) such that it has no pair in b' without k, and k has
    none in its new batch: every swap removes a pair and adds none, so batches already
    cleared stay clear. Returns the pairs left (no swap found).
    """
    left = 0
    for b in range(len(batches)):
        while True:
            over = conflicts(emb_CD, batches[b], cap)
            if not over.any():
                break
            j = int(np.argmax(over.sum(axis=1)))
            if not _swap_out(batches, flags, b, j, emb_CD, cap, rng):
                left += int(over.sum()) // 2
                break
    return left


def _swap_out(
    batches: list[np.ndarray],
    flags: list[np.ndarray],
    b: int,
    j: int,
    emb_CD: np.ndarray,
    cap: float,
    rng: np.random.Generator,
) -> bool:
    """Swap position j of batch b with a position of another batch without creating pairs."""
    others = np.delete(batches[b], j)
    moving = emb_CD[batches[b][j]]
    candidates = [c for c in rng.permutation(len(batches)) if c != b][:CAP_TRIES]
    for c in candidates:
        hit = emb_CD[batches[c]] @ moving > cap
        if hit.sum() > 1:
            continue
        positions = np.flatnonzero(hit) if hit.any() else rng.permutation(batches[c].size)
        fits = (emb_CD[batches[c][positions]] @ emb_CD[others].T <= cap).all(axis=1)
        if not fits.any():
            continue
        k = int(positions[np.argmax(fits)])
        batches[b][j], batches[c][k] = batches[c][k], batches[b][j]
        flags[b][j], flags[c][k] = flags[c][k], flags[b][j]
        return True
    return False


def pad_batch(batch: np.ndarray, n: int, emb_CD: np.ndarray, cap: float, rng: np.random.Generator) -> np.ndarray:
    """``batch`` [L] filled up to [N] with random classes not in it (and, best effort, under the cap)."""
    need = n - batch.size
    if need == 0:
        return batch
    taken = np.zeros(emb_CD.shape[0], dtype=bool)
    taken[batch] = True
    candidates = rng.permutation(np.flatnonzero(~taken))
    if cap >= 1.0:
        return np.concatenate([batch, candidates[:need]])
    members = list(batch.tolist())
    fallback: list[int] = []
    for c in candidates.tolist():
        if len(members) == n:
            break
        if (emb_CD[members] @ emb_CD[c] <= cap).all():
            members.append(c)
        elif len(fallback) < need:
            fallback.append(c)
    members.extend(fallback[: n - len(members)])  # no class fits the cap: fill anyway
    return np.asarray(members, dtype=np.int64)


class PartitionSampler:
    """The partition epoch of one service: the classes visited, the plan, the cursor."""

    def __init__(self, num_classes: int, seed: int):
        self.num_classes = num_classes
        self.seed = seed
        self._reset()

    def _reset(self) -> None:
        """No epoch started yet."""
        self.epoch = -1
        self.visited = np.zeros(self.num_classes, dtype=bool)
        self.plan: EpochPlan | None = None
        self.last_step = -1

    def next_batch(
        self, step: int, n: int, emb_CD: np.ndarray, trusted_C: np.ndarray, size: int, cap: float, recluster_steps: int
    ) -> PartitionDraw:
        """The batch of ``step`` (steps must come in increasing order; ``ValueError`` otherwise).

        A new epoch starts when the plan is used up (or N changed); the unvisited classes are
        re-dealt when s changed or ``recluster_steps`` (> 0) passed since the plan was dealt.
        """
        if step <= self.last_step:
            raise ValueError(f"partition: step {step} after step {self.last_step}")
        plan = self.plan
        new_epoch = plan is None or plan.exhausted or plan.classes_BN.shape[1] != n
        if new_epoch:
            self.epoch += 1
            self.visited[:] = False
        stale = plan is not None and recluster_steps > 0 and step - plan.step >= recluster_steps
        if new_epoch or plan is None or plan.cluster_size != size or stale:
            remaining = np.flatnonzero(~self.visited)
            plan = deal_epoch(remaining, emb_CD, trusted_C, n, size, cap, _plan_seed(self.seed, step), step)
            self.plan = plan
        row = plan.cursor
        plan.cursor += 1
        self.last_step = step
        classes, real = plan.classes_BN[row], plan.real_BN[row]
        self.visited[classes[real]] = True
        return PartitionDraw(classes.copy(), plan.clustered_BN[row].copy(), real.copy(), self.epoch, size, new_epoch)

    def state_dict(self) -> dict[str, Any]:
        """Arrays and scalars for the service's ``.npz`` state file (keys ``partition_*``)."""
        plan = self.plan
        state: dict[str, Any] = {
            "partition_epoch": self.epoch,
            "partition_last_step": self.last_step,
            "partition_visited": self.visited.copy(),
            "partition_has_plan": plan is not None,
        }
        if plan is not None:
            state.update(
                partition_classes=plan.classes_BN,
                partition_real=plan.real_BN,
                partition_clustered=plan.clustered_BN,
                partition_cluster_size=plan.cluster_size,
                partition_plan_step=plan.step,
                partition_cursor=plan.cursor,
            )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of ``state_dict``; a state without ``partition_*`` keys (older file) starts afresh."""
        if "partition_epoch" not in state:
            self._reset()
            return
        self.epoch = int(state["partition_epoch"])
        self.last_step = int(state["partition_last_step"])
        self.visited = np.asarray(state["partition_visited"], dtype=bool).copy()
        self.plan = None
        if bool(state["partition_has_plan"]):
            self.plan = EpochPlan(
                np.asarray(state["partition_classes"], dtype=np.int64).copy(),
                np.asarray(state["partition_real"], dtype=bool).copy(),
                np.asarray(state["partition_clustered"], dtype=bool).copy(),
                int(state["partition_cluster_size"]),
                int(state["partition_plan_step"]),
                int(state["partition_cursor"]),
            )


def _plan_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step
