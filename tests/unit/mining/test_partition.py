"""Partition mining: balanced clusters, epochs that cover every class once, the similarity cap,
the cluster-size schedule, resume, and the window diagnostics (no Ray)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from dml_dist.config import MiningConfig
from dml_dist.mining.clustering import balanced_clusters
from dml_dist.mining.diagnostics import batch_diagnostics, gini
from dml_dist.mining.partition import PartitionSampler, cluster_size, conflicts, deal_epoch
from dml_dist.mining.selection import select_seed_neighbours
from dml_dist.mining.service import MiningService
from tests.unit.mining.service_driver import clustered_embeddings, drive_with_a_restart, unit


def _twins(num_pairs: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    """[2 P, dim]: classes 2i and 2i+1 are near-duplicates (cosine > 0.95), other pairs far apart."""
    return clustered_embeddings(num_clusters=num_pairs, size=2, dim=dim, noise=0.03, seed=seed)


def _epochs(sampler: PartitionSampler, steps: int, n: int, emb: np.ndarray, trusted: np.ndarray, **kw: object):  # type: ignore[no-untyped-def]
    """Drive the sampler; returns {epoch: real classes visited, in order} and the batches."""
    visits: dict[int, list[int]] = {}
    batches = []
    for t in range(steps):
        size = kw.get("size_at", lambda _t: 4)(t)  # type: ignore[operator]
        draw = sampler.next_batch(t, n, emb, trusted, size, kw.get("cap", 1.0), kw.get("recluster", 0))  # type: ignore[arg-type]
        assert len(set(draw.classes.tolist())) == n, "a batch repeats a class"
        visits.setdefault(draw.epoch, []).extend(draw.classes[draw.real].tolist())
        batches.append(draw)
    return visits, batches


# ----------------------------------------------------------------------------- (e) balanced clusters
@pytest.mark.parametrize(("num_rows", "size"), [(103, 4), (64, 8), (5, 8), (200, 1), (1000, 2)])
def test_clusters_have_exactly_s_members_and_cover_every_row_once(num_rows: int, size: int) -> None:
    emb = unit(np.random.default_rng(0).standard_normal((num_rows, 8)))
    clusters, leftovers = balanced_clusters(emb, size, seed=3)
    assert clusters.shape == (num_rows // size, size)
    assert leftovers.size == num_rows % size
    np.testing.assert_array_equal(np.sort(np.concatenate([clusters.ravel(), leftovers])), np.arange(num_rows))
    again, _ = balanced_clusters(emb, size, seed=3)
    np.testing.assert_array_equal(clusters, again)  # deterministic for a seed


@pytest.mark.parametrize("dim", [32, 96])  # 96: clustered in the top 32 principal directions
def test_clusters_gather_close_classes(dim: int) -> None:
    """Far-apart groups of 8: most clusters of 8 hold at most 2 groups (random cuts would hold ~8)."""
    emb = clustered_embeddings(num_clusters=32, size=8, dim=dim, noise=0.05, seed=1)
    perm = np.random.default_rng(2).permutation(emb.shape[0])
    clusters, _ = balanced_clusters(emb[perm], 8, seed=0)
    groups = perm[clusters] // 8
    assert np.mean([np.unique(g).size <= 2 for g in groups]) > 0.8


# ----------------------------------------------------------------------------- (d) schedule
def test_cluster_size_schedule() -> None:
    sizes = [cluster_size(t, 64, warmup_steps=10, double_every=5, max_size=64) for t in (0, 9, 10, 14, 15, 20, 25, 40)]
    assert sizes == [1, 1, 2, 2, 4, 8, 16, 16]  # capped at N / 4 = 16
    assert cluster_size(100, 64, 10, 5, max_size=4) == 4
    assert cluster_size(100, 320, 10, 5, max_size=1000) == 64  # <= N / 4 = 80 and divides 320
    assert cluster_size(100, 100, 10, 5, max_size=1000) == 4  # 8 does not divide 100
    assert cluster_size(10, 64, 10, 0, max_size=64) == 16  # double_every 0: the cap at once
    assert cluster_size(50, 64, 10, 5, max_size=64, warm=False) == 1
    assert cluster_size(50, 6, 10, 5, max_size=64) == 1  # N / 4 < 2


# ----------------------------------------------------------------------------- (a) coverage
@pytest.mark.parametrize("recluster", [0, 3])
def test_every_class_once_per_epoch(recluster: int) -> None:
    """C = 103 (not a multiple of N = 12), 23 classes not in the bank, s growing mid-epoch."""
    num_classes, n = 103, 12
    emb = unit(np.random.default_rng(0).standard_normal((num_classes, 8)))
    trusted = np.ones(num_classes, dtype=bool)
    trusted[np.random.default_rng(1).choice(num_classes, 23, replace=False)] = False
    emb[~trusted] = 0.0  # as in the bank: no centre yet
    sampler = PartitionSampler(num_classes, seed=0)
    visits, batches = _epochs(
        sampler, 40, n, emb, trusted, size_at=lambda t: 1 if t < 5 else (2 if t < 12 else 4), recluster=recluster
    )
    complete = [e for e in visits if e < max(visits)]
    assert len(complete) >= 3
    for e in complete:
        assert sorted(visits[e]) == list(range(num_classes)), f"epoch {e} does not cover every class once"
    assert any(b.clustered.any() for b in batches) and not any(b.clustered.any() for b in batches[:5])


def test_a_batch_is_whole_clusters() -> None:
    emb = clustered_embeddings(num_clusters=30, size=4, dim=16, noise=0.05)
    plan = deal_epoch(np.arange(120), emb, np.ones(120, bool), n=16, size=4, cap=1.0, seed=0)
    assert plan.classes_BN.shape == (8, 16) and plan.real_BN[-1].sum() == 120 - 7 * 16
    clusters, _ = balanced_clusters(emb, 4, seed=0)
    # Positions 4i..4i+3 of a batch are one unit: one of the planted groups here.
    units = plan.classes_BN[:, : (120 - 7 * 16)].reshape(8, -1, 4)
    assert np.mean([np.unique(u // 4).size == 1 for u in units.reshape(-1, 4)]) > 0.8
    assert clusters.shape == (30, 4)


# ----------------------------------------------------------------------------- (b) similarity cap
def test_cap_keeps_near_duplicates_apart_in_partition_batches() -> None:
    emb = _twins(60)  # 120 classes, each with a twin at cosine > 0.95
    trusted = np.ones(120, dtype=bool)
    assert conflicts(emb, np.arange(120), 0.9).sum() == 120  # every class has its twin
    sampler = PartitionSampler(120, seed=0)
    _, batches = _epochs(sampler, 30, 16, emb, trusted, size_at=lambda t: 4, cap=0.9)
    for draw in batches:
        assert not conflicts(emb, draw.classes, 0.9).any(), "two classes above the cap share a batch"
    # Without the cap, the clusters hold the twins together.
    free = PartitionSampler(120, seed=0)
    _, uncapped = _epochs(free, 5, 16, emb, trusted, size_at=lambda t: 4)
    assert all(conflicts(emb, d.classes, 0.9).any() for d in uncapped)


def test_cap_in_seed_neighbours() -> None:
    emb = _twins(100)
    # top 3: the twin (above the cap) and two far classes, which are taken instead.
    classes, relied = select_seed_neighbours(emb, 40, seed=1, top_k=3, similarity_cap=0.9)
    assert len(set(classes.tolist())) == 40 and relied.sum() == 20
    mined = classes[: int(np.flatnonzero(relied).max()) + 1]  # groups; the random fill is not checked
    assert not conflicts(emb, mined, 0.9).any()
    uncapped, _ = select_seed_neighbours(emb, 40, seed=1, top_k=3)
    assert conflicts(emb, uncapped, 0.9).any()


def test_candidate_pool_picks_top_k_within_a_random_pool() -> None:
    emb = _twins(100)
    a, relied = select_seed_neighbours(emb, 40, seed=3, top_k=1, candidate_pool=8)
    b, _ = select_seed_neighbours(emb, 40, seed=3, top_k=1, candidate_pool=8)
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 40 and relied[1::2].all()
    # A pool of 8 of 199 rarely holds the twin: most neighbours are not the seed's twin.
    twins = a[0::2] // 2 == a[1::2] // 2
    assert twins.mean() < 0.5
    full, _ = select_seed_neighbours(emb, 40, seed=3, top_k=1, candidate_pool=10_000)  # pool = all: the twin
    assert np.all(full[0::2] // 2 == full[1::2] // 2)


# ----------------------------------------------------------------------------- (c) resume
def _partition_config(**fields: object) -> MiningConfig:
    return MiningConfig(
        **{  # type: ignore[arg-type]
            "rule": "partition",
            "warmup_steps": 4,
            "warmup_coverage": 0.0,
            "partition_double_every_steps": 5,
            "partition_recluster_steps": 7,
            "similarity_cap": 0.97,
            "refresh_every": 5,
            "refresh_after_steps": 4,
            **fields,
        }
    )


def test_resumed_partition_service_deals_the_same_batches(tmp_path) -> None:  # type: ignore[no-untyped-def]
    emb = clustered_embeddings(num_clusters=75, size=4, dim=16, noise=0.1)  # 300 classes, N = 24: 12.5 batches an epoch
    config = _partition_config()
    n, total = 24, 50
    uninterrupted, resumed, _, _ = drive_with_a_restart(config, emb, n, total, 23, tmp_path)
    late = uninterrupted.next_classes(total - 1, n)
    assert late.mined and late.rule == "partition" and late.cluster_size == 4 and late.epoch >= 2
    again = resumed.next_classes(total - 1, n)
    assert replace(again, selection_seconds=None) == replace(late, selection_seconds=None)  # diagnostics too
    assert uninterrupted.next_classes(3, n).reason == "out_of_order"  # an old step takes no batch


def test_partition_service_warms_up_with_permutation_epochs() -> None:
    service = MiningService(100, 8, _partition_config(warmup_steps=100), seed=0)
    seen: list[int] = []
    for t in range(10):  # 100 classes, N = 10: one permutation epoch, no bank needed
        answer = service.next_classes(t, 10)
        assert answer.reason == "warmup" and answer.cluster_size == 1 and answer.epoch == 0
        seen.extend(answer.classes)
    assert sorted(seen) == list(range(100))
    assert answer.epoch_distinct_classes == 100 and answer.visit_gini == 0.0
    assert service.next_classes(10, 10).epoch == 1


# ----------------------------------------------------------------------------- diagnostics
def test_gini_and_window_diagnostics() -> None:
    assert gini(np.array([3, 3, 3, 3])) == 0.0
    assert gini(np.array([0, 0, 0, 4])) == pytest.approx(0.75)  # (C - 1) / C for one class taking all
    emb = _twins(10)
    seen = np.ones(20, dtype=bool)
    batches = [np.array([0, 1, 2, 4]), np.array([6, 8, 10, 12])]
    figures = batch_diagnostics(batches, [True, False], 20, emb, seen, cap=0.9)
    assert figures["epoch_distinct_classes"] == 8
    assert figures["cap_violation_share"] == pytest.approx(1 / 6)  # one twin pair of 6 in the mined batch
    assert figures["visit_gini"] == pytest.approx(gini(np.bincount(np.concatenate(batches), minlength=20)))
    assert batch_diagnostics(batches, [True, False], 20, emb, seen, cap=1.0)["cap_violation_share"] is None
