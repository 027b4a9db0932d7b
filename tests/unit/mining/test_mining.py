"""Hard-class selection (exact and on a kNN graph), the class bank, the service and the refresh pass."""

from __future__ import annotations

import numpy as np
import pytest

from dml_dist.config import ExperimentConfig, MiningConfig
from dml_dist.config.loader import replaced
from dml_dist.mining.bank import ClassBank
from dml_dist.mining.graph import build_knn_graph
from dml_dist.mining.hardness import nearest_negative_similarity, violation_rate
from dml_dist.mining.selection import select_hard_classes, select_seed_neighbours
from dml_dist.mining.service import PUBLISH_LAG, MiningService
from tests.unit.mining.service_driver import clustered_embeddings, drive_with_a_restart, unit


def _config(**fields: object) -> MiningConfig:
    """Mining settings that mine from the first step unless a test sets a schedule."""
    return MiningConfig(**{"warmup_steps": 0, "ramp_steps": 0, **fields})  # type: ignore[arg-type]


def _full_neighbours(emb: np.ndarray) -> np.ndarray:
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1)[:, :-1]


# ----------------------------------------------------------------------------- selection
@pytest.mark.parametrize("path", ["exact", "graph"])
def test_planted_near_duplicates_share_the_batch(path: str) -> None:
    """Every class has one near-duplicate; the greedy picks take whole pairs."""
    emb = clustered_embeddings(num_clusters=100, size=2, dim=32, noise=0.05)
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
    emb = unit(rng.standard_normal((300, 16)))
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
    emb = clustered_embeddings(num_clusters=300, size=4, dim=32, noise=0.02, seed=2)
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
    emb = unit(np.random.default_rng(3).standard_normal((50, 8)))
    empty = np.full((50, 4), -1, dtype=np.int64)
    picks = select_hard_classes(emb, 30, seed=0, neighbours=empty)
    assert len(set(picks.tolist())) == 30


def test_deterministic_for_a_seed() -> None:
    emb = unit(np.random.default_rng(4).standard_normal((500, 32)))
    nbrs = build_knn_graph(emb, k=16).neighbours
    for neighbours in (None, nbrs):
        a = select_hard_classes(emb, 50, seed=7, random_share=0.3, neighbours=neighbours)
        b = select_hard_classes(emb, 50, seed=7, random_share=0.3, neighbours=neighbours)
        c = select_hard_classes(emb, 50, seed=8, random_share=0.3, neighbours=neighbours)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_random_share_is_respected() -> None:
    emb = clustered_embeddings(num_clusters=100, size=2, dim=32, noise=0.05)
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


def test_seed_neighbours_pairs_each_seed_with_its_twin() -> None:
    """Near-duplicate pairs (2i, 2i+1): with K = 1 every seed is joined by its twin."""
    emb = clustered_embeddings(num_clusters=100, size=2, dim=32, noise=0.05)
    for neighbours in (None, build_knn_graph(emb, k=8).neighbours):
        classes, relied = select_seed_neighbours(emb, 40, seed=1, top_k=1, neighbours=neighbours)
        assert len(set(classes.tolist())) == 40
        pairs = classes // 2
        assert np.all(pairs[0::2] == pairs[1::2]) and relied.tolist() == [False, True] * 20
    # hard_share 0.5 with groups of 4: 5 groups (20 classes) of a seed and 3 neighbours, then 20 random.
    classes, relied = select_seed_neighbours(emb, 40, seed=2, group_size=4, hard_share=0.5)
    assert relied.sum() == 15 and not relied[20:].any() and len(set(classes.tolist())) == 40


def test_seed_neighbours_samples_among_the_top_k_by_softmax() -> None:
    """One seed, 4 candidates at known similarities: draws follow softmax(sim / T) over the top K."""
    sims = np.array([1.0, 0.9, 0.8, 0.7, 0.0])  # class 0 is the seed; 4 is never in the top 3
    emb = np.stack([sims, np.sqrt(1 - sims**2), np.zeros(5)], axis=1).astype(np.float32)
    eligible = np.ones(5, dtype=bool)
    counts = np.zeros(5)
    seeds_on_zero = 0
    for seed in range(3000):
        classes, relied = select_seed_neighbours(emb, 2, seed=seed, eligible=eligible, top_k=3, temperature=0.1)
        if classes[0] == 0:
            seeds_on_zero += 1
            counts[classes[1]] += 1
    expected = np.exp(np.array([0.9, 0.8, 0.7]) / 0.1)
    expected /= expected.sum()
    assert counts[4] == 0 and counts[0] == 0
    np.testing.assert_allclose(counts[1:4] / seeds_on_zero, expected, atol=0.05)


def test_seed_neighbours_seeds_cover_all_classes_and_need_an_embedding_for_neighbours() -> None:
    emb = clustered_embeddings(num_clusters=100, size=2, dim=32, noise=0.05)
    eligible = np.zeros(200, dtype=bool)
    eligible[:100] = True
    seen_as_seed = np.zeros(200, dtype=bool)
    for seed in range(200):
        classes, relied = select_seed_neighbours(emb, 20, seed=seed, eligible=eligible)
        assert np.all(classes[relied] < 100)  # neighbours have embeddings
        seen_as_seed[classes[0]] = True
        assert len(set(classes.tolist())) == 20
    assert seen_as_seed[100:].any()  # seeds come from all classes


def test_violation_rate() -> None:
    # Two classes of two rows each; anchor 0's hardest negative (row 2) is closer than its positive.
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.0, -1.0]])
    labels = np.array([0, 0, 1, 1])
    # Row 0: s+ = 0, s- = 0.99 -> violates. Row 1: s+ = 0, s- = max(0.11, -1) -> violates.
    # Row 2: s+ = -0.1, s- = 0.99 -> violates. Row 3: s+ = -0.1, s- = 0 -> violates.
    assert violation_rate(emb, labels) == 1.0
    separated = np.array([[1.0, 0.0], [0.99, 0.1], [-1.0, 0.0], [-0.99, -0.1]])
    assert violation_rate(separated, labels) == 0.0
    assert violation_rate(separated, labels, margin=3.0) == 1.0
    import torch

    assert violation_rate(torch.tensor(separated, requires_grad=True), torch.tensor(labels)) == 0.0
    assert np.isnan(violation_rate(separated, np.arange(4)))  # no positives


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
    config = _config(rule="greedy", warmup_coverage=0.5, random_share=0.0, refresh_every=5, refresh_after_steps=3)
    path = tmp_path / "bank.npz"
    service = MiningService(200, 32, config, seed=0, checkpoint_path=str(path))
    emb = clustered_embeddings(num_clusters=100, size=2, dim=32, noise=0.05)
    assert service.next_classes(1, 20).mined is False  # cold: random classes
    service.publish(1, np.arange(120), emb[:120])
    # The answer for step t reads the publishes of steps <= t - PUBLISH_LAG only.
    assert service.next_classes(1 + PUBLISH_LAG - 1, 20).mined is False
    answer = service.next_classes(1 + PUBLISH_LAG, 20)
    assert answer.mined is True and answer.negative_similarity > 0.9 and answer.rule == "greedy"
    assert set(answer.classes) <= set(range(120))  # greedy picks need an embedding
    assert answer.staleness_at_selection_max == PUBLISH_LAG  # relied on classes published at step 1
    answer = service.next_classes(5, 20)
    assert answer.stale_classes[:3] == [120, 121, 122]  # never-seen classes first
    assert service.next_classes(6, 20).stale_classes == []
    service.save()
    restored = MiningService(200, 32, config, seed=0, checkpoint_path=str(path))
    assert restored.stats()["restored_step"] == 1
    np.testing.assert_array_equal(restored.bank.embeddings, service.bank.embeddings)
    assert restored.next_classes(7, 20).classes == service.next_classes(7, 20).classes


def test_service_uses_the_graph_on_large_banks() -> None:
    config = _config(
        rule="greedy",
        warmup_coverage=0.5,
        random_share=0.0,
        exact_below_classes=100,
        num_neighbours=8,
        graph_rebuild_steps=5,
    )
    service = MiningService(200, 32, config, seed=0)
    emb = clustered_embeddings(num_clusters=100, size=2, dim=32, noise=0.05)
    service.publish(1, np.arange(200), emb)
    # The graph of the bank at step 5 is used from step 5 + R + PUBLISH_LAG on; random before.
    first = 5 + 5 + PUBLISH_LAG
    assert service.next_classes(first - 1, 20).reason == "graph_pending"
    answer = service.next_classes(first, 20)
    assert answer.mined is True and answer.graph_step == 5
    stats = service.stats()
    assert stats["selection"] == "graph" and stats["graph_step"] in (5, 10)  # the newest graph built
    assert np.all(np.bincount(np.asarray(answer.classes) // 2) % 2 == 0)


def test_random_rule_and_warmup_schedule() -> None:
    emb = clustered_embeddings(num_clusters=100, size=2, dim=32, noise=0.05)
    random_rule = MiningService(200, 32, _config(rule="random", warmup_coverage=0.0), seed=0)
    random_rule.publish(0, np.arange(200), emb)
    answer = random_rule.next_classes(10, 20)
    assert answer.mined is False and answer.reason == "rule" and answer.hard_share == 0.0
    config = _config(warmup_coverage=0.0, warmup_steps=10, ramp_steps=10, random_share=0.2)
    service = MiningService(200, 32, config, seed=0)
    assert [service.hard_share(t) for t in (0, 9, 10, 14, 19, 30)] == pytest.approx([0, 0, 0.08, 0.4, 0.8, 0.8])
    service.publish(0, np.arange(200), emb)
    assert service.next_classes(9, 40).reason == "warmup"
    late = service.next_classes(30, 40)
    assert late.mined is True and late.hard_share == pytest.approx(0.8)
    pairs = np.asarray(late.classes[:32]) // 2  # 16 groups of a seed and its twin, then 8 random classes
    assert np.all(pairs[0::2] == pairs[1::2])


def test_fresh_within_steps_mines_only_recently_refreshed_classes() -> None:
    emb = clustered_embeddings(num_clusters=100, size=2, dim=32, noise=0.05)
    config = _config(warmup_coverage=0.0, random_share=0.0, fresh_within_steps=10)
    service = MiningService(200, 32, config, seed=0)
    service.publish(0, np.arange(100), emb[:100])  # old by step 40
    service.publish(35, np.arange(100, 200), emb[100:])
    answer = service.next_classes(40, 40)
    # Seeds of the old half have no trusted embedding: their slots go to random classes.
    assert answer.mined is True and answer.staleness_at_selection_max == 40 - 35
    stale_config = _config(warmup_coverage=0.0, random_share=0.0)
    any_age = MiningService(200, 32, stale_config, seed=0)
    any_age.publish(0, np.arange(100), emb[:100])
    any_age.publish(35, np.arange(100, 200), emb[100:])
    assert any_age.next_classes(40, 40).staleness_at_selection_max == 40


@pytest.mark.parametrize("search", ["exact", "graph"])
@pytest.mark.parametrize("rule", ["seed_neighbours", "greedy"])
def test_resumed_service_answers_as_the_uninterrupted_one(tmp_path, search: str, rule: str) -> None:  # type: ignore[no-untyped-def]
    """Save at step s, restore into a fresh service: the answers from s on are the same."""
    emb = clustered_embeddings(num_clusters=150, size=2, dim=16, noise=0.1)
    config = _config(
        rule=rule,
        warmup_coverage=0.3,
        warmup_steps=4,
        ramp_steps=6,
        refresh_every=5,
        refresh_after_steps=4,
        refresh_max_classes=16,
        exact_below_classes=100 if search == "graph" else 100_000,
        num_neighbours=8,
        graph_rebuild_steps=6,
    )
    n, total, s = 24, 60, 27
    uninterrupted, _, full, restored_step = drive_with_a_restart(config, emb, n, total, s, tmp_path)
    assert restored_step == s - 1
    assert sum(answer != full[0] for answer in full) > 0 and uninterrupted.stats()["selections"] > 0
    if search == "graph":
        assert uninterrupted.stats()["graph_step"] is not None


def test_mining_config_validation() -> None:
    with pytest.raises(ValueError, match="mining.num_neighbours"):
        replaced(ExperimentConfig(), {"mining.num_neighbours": 0})


# ----------------------------------------------------------------------------- refresh pass
def test_refresh_embeds_and_publishes_stale_classes(small_data) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    import torch

    from dml_dist.data.bad_data import BadDataLog
    from dml_dist.data.datasets import resolve_data
    from dml_dist.data.shard_index import IndexedShards
    from dml_dist.models.embedder import build_model
    from dml_dist.train.refresh import refresh_stale_classes

    config = ExperimentConfig(data=small_data)
    shards = IndexedShards(resolve_data(small_data).train)
    order = list(range(shards.num_classes))[::-1]  # loader positions need not be shard positions
    sizes = [shards.class_sizes()[c] for c in order]
    loader = SimpleNamespace(shards=shards, classes=order, class_sizes=sizes, bad=BadDataLog())

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


# ----------------------------------------------------------------------------- class index spaces
def test_class_ids_map_bank_positions_shard_indices_and_labels(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A loader that drops classes: bank_pos, class_index and label differ, and ClassIds maps them."""
    from dml_dist.data.decode_spec import DecodeSpec
    from dml_dist.data.formats import write_dataset
    from dml_dist.data.indexed_loader import ClassBatchLoader
    from dml_dist.data.shard_index import IndexedShards
    from dml_dist.mining.class_ids import ClassIds
    from tests.unit.data.test_data import make_folder

    make_folder(tmp_path / "src", [3, 1, 3, 2, 3], nested=False)
    write_dataset("folder", tmp_path / "src", tmp_path / "shards", samples_per_shard=100, holdout=0.0)
    shards = IndexedShards(tmp_path / "shards")
    loader = ClassBatchLoader(
        shards, DecodeSpec(12), seed=0, images_per_class=3, world_size=1, rank=0, min_images_policy="exclude"
    )
    ids = ClassIds.of_loader(loader)
    assert ids.class_index_of([0, 1, 2]) == [0, 2, 4]  # shard classes 1 and 3 have fewer than K images
    assert ids.bank_pos_of([4, 0]) == [2, 0]
    assert ids.label_of([0, 1, 2]) == loader.labels == [shards.labels[c] for c in (0, 2, 4)]
    _, labels = loader.load(0, [2, 0])
    assert labels.tolist() == [ids.label_of([2])[0]] * 3 + [ids.label_of([0])[0]] * 3
