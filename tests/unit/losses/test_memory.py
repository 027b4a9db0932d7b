"""Cross-batch memory: the ring buffer (order, wrap, start step, checkpoints, stats), the memory
term of the losses against direct loops over (anchor, candidate) pairs, shares that sum to the
one-process memory term, no gradient into the memory, and the config checks."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from dml_dist.config import MemoryConfig
from dml_dist.config.loader import load_config
from dml_dist.losses import LOSSES, build_loss
from dml_dist.losses.memory import CrossBatchMemory, LossWithMemory, NoMemory, build_memory, combined_loss

MEMORY_LOSSES = sorted(name for name in LOSSES if build_loss(name).takes_memory)


def _rows(n: int, dim: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=gen, dtype=torch.float64), torch.randint(0, 5, (n,), generator=gen)


# ----------------------------------------------------------------------------- the ring buffer


def test_enqueue_keeps_the_newest_rows_in_write_order_across_the_wrap() -> None:
    memory = CrossBatchMemory(10, 4, dtype=torch.float64)
    written = []
    for step in range(5):  # 5 batches of 4 rows into 10 slots: wraps twice, mid-batch
        emb, labels = _rows(4, seed=step)
        assert memory.enqueue(emb, labels, step)
        written.append((emb, labels))
    all_emb = torch.cat([e for e, _ in written])
    all_labels = torch.cat([y for _, y in written])
    for count in (0, 3, 10, 25):
        emb, labels = memory.newest(count)
        kept = min(count, 10)
        assert torch.equal(emb, all_emb[len(all_emb) - kept :]) and torch.equal(labels, all_labels[20 - kept :])
    assert memory.num_filled == 10
    stats = memory.stats(4)  # rows of steps 2 (2 rows), 3 and 4 (4 rows each)
    assert stats == {
        "memory_fill": 1.0,
        "memory_age_mean_steps": (2 * 2 + 4 * 1 + 4 * 0) / 10,
        "memory_age_max_steps": 2,
        "memory_bytes": float(memory.nbytes),
    }


def test_candidates_are_the_batch_then_the_older_rows_as_after_the_write() -> None:
    memory = CrossBatchMemory(10, 4, dtype=torch.float64)
    for step in range(3):
        memory.enqueue(*_rows(4, seed=step), step)
    batch, batch_labels = _rows(4, seed=9)
    cand, cand_labels = memory.candidates(batch.requires_grad_(True), batch_labels)
    after = CrossBatchMemory(10, 4, dtype=torch.float64)
    after.load_state_dict(memory.state_dict())
    after.enqueue(batch.detach(), batch_labels, 3)
    written, written_labels = after.newest(10)
    # The same rows as the memory after the write: the batch first, then the 6 newest older rows.
    assert torch.equal(cand[:4], batch.detach()) and torch.equal(cand[4:], written[:6])
    assert torch.equal(cand_labels[4:], written_labels[:6]) and not cand.requires_grad
    with pytest.raises(ValueError, match="memory.size"):
        memory.candidates(
            *_rows(11),
        )


def test_nothing_is_written_before_start_step_or_when_a_row_is_not_finite() -> None:
    memory = CrossBatchMemory(8, 4, start_step=2, dtype=torch.float64)
    assert not memory.enqueue(*_rows(4), 1) and memory.num_filled == 0
    bad, labels = _rows(4)
    bad[1, 2] = float("nan")
    assert not memory.enqueue(bad, labels, 2) and memory.num_filled == 0
    assert memory.enqueue(*_rows(4), 2) and memory.num_filled == 4
    assert not memory.is_active(1) and memory.is_active(2)


def test_state_dict_resumes_the_same_memory() -> None:
    memory = CrossBatchMemory(12, 4, dtype=torch.float64)
    for step in range(4):
        memory.enqueue(*_rows(5, seed=step), step)
    resumed = CrossBatchMemory(12, 4, dtype=torch.float64)
    resumed.load_state_dict(memory.state_dict())
    for step in range(4, 7):  # both continue: same rows, same slots, same steps
        memory.enqueue(*_rows(5, seed=step), step)
        resumed.enqueue(*_rows(5, seed=step), step)
    for a, b in zip(memory.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    with pytest.raises(ValueError, match="memory.size"):
        CrossBatchMemory(16, 4).load_state_dict(memory.state_dict())
    with pytest.raises(ValueError, match="memory.size"):
        NoMemory().load_state_dict(memory.state_dict())
    with pytest.raises(ValueError, match="memory.size: the checkpoint holds no memory"):
        memory.load_state_dict(NoMemory().state_dict())


def test_nbytes_and_build_memory() -> None:
    memory = build_memory(MemoryConfig(size=8192, weight=0.5, start_step=3), 512)
    assert isinstance(memory, CrossBatchMemory) and (memory.weight, memory.start_step) == (0.5, 3)
    assert memory.nbytes == 8192 * 512 * 4 + 2 * 8192 * 8  # fp32 rows, int64 labels and steps
    off = build_memory(MemoryConfig(), 512)
    assert isinstance(off, NoMemory) and off.nbytes == 0 and not off.enqueue(*_rows(4), 0)


# ----------------------------------------------------------------------------- the memory term


def _pairs(num_anchors: int, labels: torch.Tensor):  # type: ignore[no-untyped-def]
    """(anchor i, candidate j, same label) for every anchor i and candidate j != i."""
    for i, j in itertools.product(range(num_anchors), range(len(labels))):
        if i != j:
            yield i, j, bool(labels[i] == labels[j])


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b / (a.norm() * b.norm())


def _loop_contrastive(a, c, y, m=1.0):  # type: ignore[no-untyped-def]
    x, z = F.normalize(a, dim=1), F.normalize(c, dim=1)
    terms = [0.5 * (x[i] - z[j]).norm() ** 2 if pos else 0.5 * torch.relu(m - (x[i] - z[j]).norm()) ** 2
             for i, j, pos in _pairs(len(a), y)]  # fmt: skip
    return sum(terms) / len(terms)


def _loop_binomial(a, c, y, alpha=2.0, beta=0.5, cost=25.0):  # type: ignore[no-untyped-def]
    pairs = list(_pairs(len(a), y))
    n_pos = sum(p for *_, p in pairs)
    total = 0.0
    for i, j, pos in pairs:
        m, w = (1.0, 1 / n_pos) if pos else (-cost, 1 / (len(pairs) - n_pos))
        total = total + w * torch.log(1 + torch.exp(-alpha * (_cos(a[i], c[j]) - beta) * m))
    return total


def _loop_tuplet(a, c, y, l2_reg=0.002):  # type: ignore[no-untyped-def]
    terms = []
    for i, p, pos in _pairs(len(a), y):
        if pos:
            inner = sum(torch.exp(a[i] @ c[k] - a[i] @ c[p]) for k in range(len(y)) if y[k] != y[i])
            terms.append(torch.log(1 + inner) + l2_reg / 4 * (a[i] @ a[i] + c[p] @ c[p]))
    return sum(terms) / len(terms)


def _loop_multi_similarity(a, c, y, alpha=2.0, beta=50.0, base=0.5, eps=0.1):  # type: ignore[no-untyped-def]
    total = 0.0
    for i in range(len(a)):
        s = [_cos(a[i], c[j]) for j in range(len(y))]
        pos = [j for j in range(len(y)) if j != i and y[j] == y[i]]
        neg = [j for j in range(len(y)) if y[j] != y[i]]
        min_pos, max_neg = min(float(s[j]) for j in pos), max(float(s[j]) for j in neg)
        kept_pos = [j for j in pos if float(s[j]) - eps < max_neg]
        kept_neg = [j for j in neg if float(s[j]) + eps > min_pos]
        total = total + torch.log(1 + sum(torch.exp(-alpha * (s[j] - base)) for j in kept_pos)) / alpha
        total = total + torch.log(1 + sum(torch.exp(beta * (s[j] - base)) for j in kept_neg)) / beta
    return total / len(a)


def _loop_nca(a, c, y, scale=1.0):  # type: ignore[no-untyped-def]
    total, count = 0.0, 0
    for i in range(len(a)):
        d = {j: (a[i] - c[j]).pow(2).sum() for j in range(len(y)) if j != i}
        pos = [j for j in d if y[j] == y[i]]
        if pos:
            log_z = torch.logsumexp(torch.stack([-scale * d[j] for j in d]), 0)
            total = total + torch.logsumexp(torch.stack([-scale * d[j] for j in pos]), 0) - log_z
            count += 1
    return -total / count


def _loop_triplet_all(a, c, y, margin=0.2):  # type: ignore[no-untyped-def]
    x, z = F.normalize(a, dim=1), F.normalize(c, dim=1)
    terms = []
    for i, p, pos in _pairs(len(a), y):
        if pos:
            for n in range(len(y)):
                if y[n] != y[i]:
                    terms.append(torch.relu((x[i] - z[p]).pow(2).sum() - (x[i] - z[n]).pow(2).sum() + margin))
    nonzero = [t for t in terms if float(t) > 0]
    return sum(nonzero) / len(nonzero)


def _loop_dro_topk(a, c, y, k):  # type: ignore[no-untyped-def]
    values = []
    for i, j, pos in _pairs(len(a), y):
        s = _cos(a[i], c[j])
        values.append(torch.relu(0.2 + 0.5 - s) if pos else torch.relu(0.2 + s - 0.5))
    return sum(sorted(values, key=float, reverse=True)[:k]) / k


LOOPS = {
    "contrastive": ({}, _loop_contrastive),
    "binomial": ({}, _loop_binomial),
    "tuplet": ({}, _loop_tuplet),
    "multi_similarity": ({}, _loop_multi_similarity),
    "nca": ({}, _loop_nca),
    "triplet": ({}, _loop_triplet_all),
    "dro_topk": ({"k": 60}, lambda a, c, y: _loop_dro_topk(a, c, y, 60)),
}


def _batch_and_memory(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor, CrossBatchMemory]:
    """A batch of 12 rows (4 classes x 3) and a memory of 20 rows from earlier 'steps'."""
    gen = torch.Generator().manual_seed(seed)
    memory = CrossBatchMemory(32, 6, dtype=torch.float64)
    for step in range(2):
        memory.enqueue(
            torch.randn(10, 6, generator=gen, dtype=torch.float64), torch.randint(0, 7, (10,), generator=gen), step
        )
    labels = torch.arange(4).repeat_interleave(3)[torch.randperm(12, generator=gen)]
    return torch.randn(12, 6, generator=gen, dtype=torch.float64), labels, memory


@pytest.mark.parametrize("name", sorted(LOOPS))
def test_memory_term_matches_a_direct_loop_over_anchor_candidate_pairs(name: str) -> None:
    """L(anchors = batch, candidates = batch (detached) + memory), value and gradient."""
    params, loop = LOOPS[name]
    emb, labels, memory = _batch_and_memory()
    loss = build_loss(name, **params).double()
    leaf = emb.clone().requires_grad_(True)
    cand, cand_labels = memory.candidates(leaf, labels)
    ours = loss(leaf, labels, cand, cand_labels, ref_start=0, ref_anchors=12)
    (grad,) = torch.autograd.grad(ours, leaf)
    leaf_loop = emb.clone().requires_grad_(True)
    expected = loop(leaf_loop, cand, cand_labels)
    (grad_loop,) = torch.autograd.grad(expected, leaf_loop)
    torch.testing.assert_close(ours.detach(), expected.detach())
    torch.testing.assert_close(grad, grad_loop)


@pytest.mark.parametrize("empty", [False, True])
@pytest.mark.parametrize("name", MEMORY_LOSSES)
def test_memory_term_shares_sum_to_the_one_process_term(name: str, empty: bool) -> None:
    """Shares of 3 'ranks' of 4 anchors each, against the same candidates, sum to the whole; also
    with the memory still empty (the candidates are then the batch's rows, detached)."""
    emb, labels, memory = _batch_and_memory(seed=5)
    if empty:
        memory = CrossBatchMemory(32, 6, dtype=torch.float64)
    params = {"k": 60} if name == "dro_topk" else {}

    def whole(x: torch.Tensor) -> torch.Tensor:
        return combined_loss(build_loss(name, **params).double(), x, labels, None, None, 0, memory, 5)

    def sharded(x: torch.Tensor) -> torch.Tensor:
        fn = LossWithMemory(build_loss(name, **params).double(), memory, 5)
        return sum(fn(x[s : s + 4], labels[s : s + 4], x, labels, ref_start=s) for s in (0, 4, 8))  # type: ignore[return-value]

    leaf1, leaf2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    value1, value2 = whole(leaf1), sharded(leaf2)
    value1.backward()
    value2.backward()
    torch.testing.assert_close(value2, value1)
    torch.testing.assert_close(leaf2.grad, leaf1.grad)
    assert torch.isfinite(value1) and torch.isfinite(leaf1.grad).all()


def test_combined_loss_is_batch_plus_weight_times_memory_term_and_nothing_before_start() -> None:
    emb, labels, memory = _batch_and_memory()
    memory.weight, memory.start_step = 0.25, 4
    loss = build_loss("multi_similarity").double()
    cand, cand_labels = memory.candidates(emb, labels)
    term = loss(emb, labels, cand, cand_labels, ref_anchors=12)
    torch.testing.assert_close(
        combined_loss(loss, emb, labels, None, None, 0, memory, 4), loss(emb, labels) + 0.25 * term
    )
    torch.testing.assert_close(combined_loss(loss, emb, labels, None, None, 0, memory, 3), loss(emb, labels))
    torch.testing.assert_close(combined_loss(loss, emb, labels, None, None, 0, NoMemory(), 9), loss(emb, labels))


def test_memory_rows_carry_no_gradient() -> None:
    emb, labels, memory = _batch_and_memory()
    before = memory.state_dict()
    leaf = emb.clone().requires_grad_(True)
    combined_loss(build_loss("contrastive").double(), leaf, labels, None, None, 0, memory, 5).backward()
    assert not memory.embeddings_MD.requires_grad and memory.embeddings_MD.grad is None
    cand, _ = memory.candidates(leaf, labels)
    assert not cand.requires_grad and cand.grad_fn is None
    memory.enqueue(leaf * 2, labels, 5)  # a tensor with a graph is stored as plain values
    assert not memory.embeddings_MD.requires_grad and memory.embeddings_MD.grad_fn is None
    assert torch.equal(before["embeddings"][:20], memory.embeddings_MD[:20])  # reading never wrote


# ----------------------------------------------------------------------------- config


def test_config_rejects_losses_that_take_no_memory_and_bad_fields() -> None:
    with pytest.raises(ValueError, match="memory: loss npair_mc takes no memory.*tuplet"):
        load_config(None, ["memory.size=8192"])
    with pytest.raises(ValueError, match="memory: loss angular takes no memory.*with_npair"):
        load_config(None, ["memory.size=8192", "loss.name=angular", "loss.with_npair=true"])
    for override, field in [
        ("memory.size=-1", "memory.size"),
        ("memory.size=100", "memory.size"),  # smaller than the global batch of 640
        ("memory.weight=-0.5", "memory.weight"),
        ("memory.start_step=-1", "memory.start_step"),
    ]:
        with pytest.raises(ValueError, match=field):
            load_config(None, [override, "loss.name=tuplet"])
    config = load_config(None, ["memory.size=4096", "loss.name=multi_similarity"])
    assert config.memory == MemoryConfig(size=4096, weight=1.0, start_step=0)
    assert load_config(None, []).memory.size == 0  # off by default
    with pytest.raises(ValueError, match="memory: NPairMCLoss takes no memory"):
        emb, labels = _rows(6)
        build_loss("npair_mc")(emb, labels, torch.cat([emb, emb]), torch.cat([labels, labels]), ref_anchors=6)


def test_memory_bench_rows_cover_the_losses_that_take_memory() -> None:
    from dml_dist.bench.losses import VARIANTS, run_memory_bench

    rows = run_memory_bench([16], [64], repeats=1)
    expected = [name for name, registry, params in VARIANTS if build_loss(registry, **params).takes_memory]
    assert [r["loss"] for r in rows] == expected and "npair_mc" not in expected
    for row in rows:
        assert row["memory_bytes"] == 64 * 512 * 4 + 2 * 64 * 8 and row["ours_over_floor"] > 0, row


def test_triplet_counts_by_binary_search_equal_the_slot_loop_bit_for_bit() -> None:
    """The memory gives an anchor many positives, where triplet counts switch to binary search."""
    from dml_dist.losses.pairs import positive_index
    from dml_dist.losses.triplet import _counts_by_search, _counts_by_slot

    for seed in range(60):
        gen = torch.Generator().manual_seed(seed)
        rows, n = int(torch.randint(1, 12, (1,), generator=gen)), int(torch.randint(12, 60, (1,), generator=gen))
        start = int(torch.randint(0, n - rows + 1, (1,), generator=gen))
        labels = torch.randint(0, 4, (n,), generator=gen)
        dist = torch.rand(rows, n, generator=gen, dtype=torch.float64)
        if seed % 2:
            dist = (dist * 4).round() / 4  # ties between positive and negative distances
        index, valid = positive_index(labels[start : start + rows], labels, start)
        neg = labels[start : start + rows, None] != labels[None, :]
        for margin, semihard in itertools.product((0.0, 0.2, 0.25, 1.0), (False, True)):
            slot = _counts_by_slot(dist, index, valid, neg, margin, semihard)
            search = _counts_by_search(dist, index, valid, neg, margin, semihard)
            assert torch.equal(slot[0], search[0]) and torch.equal(slot[1], search[1]), (seed, margin, semihard)
