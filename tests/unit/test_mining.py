"""Hard-class selection (exact and on a kNN graph), the class bank, the service and the refresh pass."""

from __future__ import annotations

import numpy as np
import pytest

from dml_dist.config.schema import ExperimentConfig, MiningConfig
from dml_dist.mining.bank import ClassBank
from dml_dist.mining.graph import build_knn_graph
from dml_dist.mining.selection import nearest_negative_similarity, select_hard_classes
from dml_dist.mining.service import MiningService


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clusters(num_clusters: int, size: int, dim: int, noise: float, seed: int = 0) -> np.ndarray:
    """[num_clusters * size, dim]: classes c and c' are in one cluster iff c // size == c' // size."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((num_clusters, dim)))
    return _unit(np.repeat(centres, size, axis=0) + noise * rng.standard_normal((num_clusters * size, dim)))


def _full_neighbours(emb: np.ndarray) -> np.ndarray:
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1)[:, :-1]


# ----------------------------------------------------------------------------- selection
@pytest.mark.parametrize("path", ["exact", "graph"])
def test_planted_near_duplicates_share_the_batch(path: str) -> None:
    """Every class has one near-duplicate; the greedy picks take whole pairs."""
    emb = _clusters(num_clusters=100, size=2, dim=32, noise=0.05)
    neighbours = build_knn_graph(emb, k=8).neighbours if path == "graph" else None
    for seed in range(5):
        picks = select_hard_classes(emb, 40, seed=seed, neighbours=neighbours)
        pair_ids = picks // 2
        assert len(set(picks.tolist())) == 40
        assert np.all(np.bincount(pair_ids) % 2 == 0), "a chosen class's twin is missing"
        # Each twin is picked right after its partner: the pair is the hardest negative at hand.
        assert np.all(pair_ids[0::2] == pair_ids[1::2])
    # Random classes would rarely hold a pair; the batch is hard by the bank.
    assert nearest_negative_similarity(emb, picks) > 0.9
    rng = np.random.default_rng(0)
    assert nearest_negative_similarity(emb, rng.choice(200, 40, replace=False)) < 0.7


@pytest.mark.parametrize("kind", ["identical", "orthonormal"])
def test_uninformative_embeddings_behave_like_random_choice(kind: str) -> None:
    """All similarities equal: every choice is a random tie-break, so inclusion is uniform."""
    num_classes, n, trials = 40, 8, 2000
    emb = np.ones((num_classes, 4), np.float32) / 2 if kind == "identical" else np.eye(num_classes, dtype=np.float32)
    counts = np.zeros(num_classes)
    first = np.zeros(num_classes)
    for seed in range(trials):
        picks = select_hard_classes(emb, n, seed=seed)
        counts[picks] += 1
        first[picks[0]] += 1
    expected = n / num_classes
    std = np.sqrt(expected * (1 - expected) / trials)
    assert np.abs(counts / trials - expected).max() < 5 * std
    assert first.min() > 0  # the first class is random too


def test_full_graph_equals_exact() -> None:
    """With every other class as a neighbour, the graph path makes the exact path's picks."""
    rng = np.random.default_rng(1)
    emb = _unit(rng.standard_normal((300, 16)))
    eligible = rng.random(300) < 0.8
    for seed in range(4):
        exact = select_hard_classes(emb, 60, seed=seed, eligible=eligible, random_share=0.2)
        graph = select_hard_classes(
            emb, 60, seed=seed, eligible=eligible, random_share=0.2, neighbours=_full_neighbours(emb)
        )
        np.testing.assert_array_equal(exact, graph)


@pytest.mark.parametrize("ivf_above", [100_000, 100])
def test_graph_and_exact_agree_on_separated_clusters(ivf_above: int) -> None:
    """Tight, far-apart clusters of 4: both paths pick whole clusters, the same first one."""
    emb = _clusters(num_clusters=300, size=4, dim=32, noise=0.02, seed=2)
    graph = build_knn_graph(emb, k=8, ivf_above=ivf_above)
    assert graph.method.startswith("flat" if ivf_above > 1200 else "ivf")
    true_nbrs = np.arange(1200).reshape(300, 4)
    found = graph.neighbours[:, :3]
    assert np.mean([set(found[c]) == set(true_nbrs[c // 4]) - {c} for c in range(1200)]) > 0.97
    for seed in range(4):
        exact = select_hard_classes(emb, 20, seed=seed)
        approx = select_hard_classes(emb, 20, seed=seed, neighbours=graph.neighbours)
        for picks in (exact, approx):
            assert np.all(np.bincount(picks // 4) % 4 == 0), "a cluster was taken in part"
        assert set(exact[:4] // 4) == set(approx[:4] // 4)


def test_graph_without_scored_candidates_falls_back_to_random() -> None:
    """Isolated classes (no neighbour lists): the graph path still returns N distinct classes."""
    emb = _unit(np.random.default_rng(3).standard_normal((50, 8)))
    empty = np.full((50, 4), -1, dtype=np.int64)
    picks = select_hard_classes(emb, 30, seed=0, neighbours=empty)
    assert len(set(picks.tolist())) == 30


def test_deterministic_for_a_seed() -> None:
    emb = _unit(np.random.default_rng(4).standard_normal((500, 32)))
    nbrs = build_knn_graph(emb, k=16).neighbours
    for neighbours in (None, nbrs):
        a = select_hard_classes(emb, 50, seed=7, random_share=0.3, neighbours=neighbours)
        b = select_hard_classes(emb, 50, seed=7, random_share=0.3, neighbours=neighbours)
        c = select_hard_classes(emb, 50, seed=8, random_share=0.3, neighbours=neighbours)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_random_share_is_respected() -> None:
    emb = _clusters(num_clusters=100, size=2, dim=32, noise=0.05)
    mixed = select_hard_classes(emb, 40, seed=3, random_share=0.25)
    hard_only = select_hard_classes(emb, 30, seed=3)
    np.testing.assert_array_equal(mixed[:30], hard_only)  # 30 greedy picks, then 10 random ones
    assert len(set(mixed.tolist())) == 40
    assert len(set(select_hard_classes(emb, 40, seed=3, random_share=1.0).tolist())) == 40
    # The greedy part only takes eligible classes; the random share fills up from all of them.
    eligible = np.zeros(200, bool)
    eligible[:6] = True
    picks = select_hard_classes(emb, 20, seed=0, eligible=eligible, random_share=0.5)
    assert set(picks[:6].tolist()) == set(range(6)) and len(set(picks.tolist())) == 20
    with pytest.raises(ValueError, match="larger than"):
        select_hard_classes(emb, 201)


# ----------------------------------------------------------------------------- bank
def test_bank_update_math() -> None:
    bank = ClassBank(num_classes=4, dim=2, momentum=0.5)
    bank.update(3, np.array([1]), np.array([[3.0, 4.0]]))
    np.testing.assert_allclose(bank.embeddings[1], [0.6, 0.8], atol=1e-6)  # first sight: normalized
    bank.update(5, np.array([1]), np.array([[0.0, 2.0]]))
    np.testing.assert_allclose(bank.embeddings[1], np.array([0.3, 0.9]) / np.hypot(0.3, 0.9), atol=1e-6)
    # Repeated ids (one row per sample) are averaged after normalizing each row.
    bank.update(6, np.array([2, 2]), np.array([[2.0, 0.0], [0.0, 5.0]]))
    np.testing.assert_allclose(bank.embeddings[2], [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)
    assert bank.last_step.tolist() == [-1, 5, 6, -1]
    assert bank.coverage() == 0.5
    assert bank.refresh_age(10) == {"max": 5.0, "mean": 4.5}
    # Stale: never-seen first, then the oldest; at most max_count.
    assert bank.stale_classes(10, after_steps=5, max_count=10).tolist() == [0, 3, 1]
    assert bank.stale_classes(10, after_steps=5, max_count=2).tolist() == [0, 3]
    assert bank.stale_classes(10, after_steps=3, max_count=10).tolist() == [0, 3, 1, 2]


def test_bank_save_and_load(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bank = ClassBank(10, 4, 0.5)
    bank.update(7, np.arange(5), np.random.default_rng(0).standard_normal((5, 4)))
    bank.save(tmp_path / "bank.npz", latest_step=7)
    restored = ClassBank(10, 4, 0.9)
    assert restored.load(tmp_path / "bank.npz") == {"latest_step": 7}
    np.testing.assert_array_equal(restored.embeddings, bank.embeddings)
    np.testing.assert_array_equal(restored.last_step, bank.last_step)
    assert restored.momentum == 0.5
    with pytest.raises(ValueError, match="do not fit"):
        ClassBank(11, 4, 0.5).load(tmp_path / "bank.npz")


# ----------------------------------------------------------------------------- service (no Ray)
def test_service_warms_up_selects_refreshes_and_restores(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = MiningConfig(warmup_coverage=0.5, random_share=0.0, refresh_every=5, refresh_after_steps=3)
    path = tmp_path / "bank.npz"
    service = MiningService(200, 32, config, seed=0, checkpoint_path=str(path))
    emb = _clusters(num_clusters=100, size=2, dim=32, noise=0.05)
    assert service.next_classes(1, 20)["mined"] is False  # cold: random classes
    service.publish(1, np.arange(120), emb[:120])
    answer = service.next_classes(2, 20)
    assert answer["mined"] is True and answer["negative_similarity"] > 0.9
    assert set(answer["classes"]) <= set(range(120))  # greedy picks need an embedding
    answer = service.next_classes(5, 20)
    assert answer["stale_classes"][:3] == [120, 121, 122]  # never-seen classes first
    assert "stale_classes" not in service.next_classes(6, 20)
    service.save()
    restored = MiningService(200, 32, config, seed=0, checkpoint_path=str(path))
    assert restored.stats()["restored_step"] == 1
    np.testing.assert_array_equal(restored.bank.embeddings, service.bank.embeddings)
    assert restored.next_classes(7, 20)["classes"] == service.next_classes(7, 20)["classes"]


def test_service_uses_the_graph_on_large_banks() -> None:
    config = MiningConfig(warmup_coverage=0.5, random_share=0.0, exact_below_classes=100, num_neighbours=8)
    service = MiningService(200, 32, config, seed=0)
    emb = _clusters(num_clusters=100, size=2, dim=32, noise=0.05)
    service.publish(1, np.arange(200), emb)
    assert service.wait_for_graph(timeout_s=30)
    stats = service.stats()
    assert stats["selection"] == "graph" and stats["graph_step"] == 1
    picks = np.asarray(service.next_classes(2, 20)["classes"])
    assert np.all(np.bincount(picks // 2) % 2 == 0)


def test_mining_config_validation() -> None:
    config = ExperimentConfig()
    config.mining.num_neighbours = 0
    with pytest.raises(ValueError, match="mining.num_neighbours"):
        config.validate()


# ----------------------------------------------------------------------------- refresh pass
def test_refresh_embeds_and_publishes_stale_classes(small_data) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    import torch

    from dml_dist.data.datasets import resolve_data
    from dml_dist.data.shards import IndexedShards
    from dml_dist.mining.refresh import refresh_stale_classes
    from dml_dist.models import build_model

    config = ExperimentConfig(data=small_data)
    shards = IndexedShards(resolve_data(small_data).train)
    order = list(range(shards.num_classes))[::-1]  # loader positions need not be shard positions
    loader = SimpleNamespace(shards=shards, classes=order, class_sizes=[shards.class_sizes()[c] for c in order])

    class Recorder:
        def publish(self, step, class_ids, emb):  # type: ignore[no-untyped-def]
            self.step, self.class_ids, self.emb = step, class_ids, emb

    model = build_model(config.model).train()
    recorder = Recorder()
    done = refresh_stale_classes(model, loader, recorder, 9, [5, 7, 11], config, torch.device("cpu"), torch.float32)
    assert done == 3 and recorder.step == 9 and model.training
    assert sorted(recorder.class_ids.tolist()) == [5, 5, 7, 7, 11, 11]
    np.testing.assert_allclose(np.linalg.norm(recorder.emb, axis=1), 1.0, atol=1e-5)
    assert refresh_stale_classes(model, loader, recorder, 10, [], config, torch.device("cpu"), torch.float32) == 0
