"""The class-driven sampler: disjoint rank shares whose union is the global N x K batch."""

from __future__ import annotations

import pytest

from dml_dist.data.sampler import random_classes, rank_share


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_rank_shares_are_disjoint_and_cover_the_global_batch(world_size: int) -> None:
    sizes = [5 + (c % 7) for c in range(1000)]
    classes = random_classes(seed=3, step=11, num_classes=1000, n=320)
    shares = [rank_share(3, 11, classes, sizes, 2, world_size, r) for r in range(world_size)]
    flat = [pair for share in shares for pair in share]
    assert len(flat) == 640 and len(set(flat)) == 640
    assert all(len(share) == 640 // world_size for share in shares)
    for a in range(world_size):
        for b in range(a + 1, world_size):
            assert not {c for c, _ in shares[a]} & {c for c, _ in shares[b]}
    per_class: dict[int, int] = {}
    for c, s in flat:
        per_class[c] = per_class.get(c, 0) + 1
        assert 0 <= s < sizes[c]
    assert sorted(per_class) == sorted(classes) and set(per_class.values()) == {2}
    # Canonical order: concatenating ranks gives the class order of the batch, K rows per class.
    assert [c for c, _ in flat][::2] == classes


def test_sampler_is_a_pure_function_of_its_inputs() -> None:
    sizes = [10] * 100
    assert rank_share(0, 5, list(range(10)), sizes, 2, 2, 1) == rank_share(0, 5, list(range(10)), sizes, 2, 2, 1)
    assert rank_share(0, 5, list(range(10)), sizes, 2, 2, 1) != rank_share(0, 6, list(range(10)), sizes, 2, 2, 1)
    assert random_classes(1, 2, 100, 20) == random_classes(1, 2, 100, 20)


def test_bad_batches_are_refused() -> None:
    with pytest.raises(ValueError, match="N=30 is larger than the 20 training classes"):
        random_classes(0, 0, 20, 30)
    with pytest.raises(ValueError, match="do not divide among 4 workers"):
        rank_share(0, 0, [0, 1, 2], [5] * 3, 2, 4, 0)
