"""Which classes a batch holds: two selection rules over the class bank, exact or on a kNN graph.

``select_seed_neighbours`` (the service's default rule, below) draws random seed classes and
joins each with neighbours sampled among its nearest classes. ``select_hard_classes`` is Sohn's
greedy chain, described first. How hard a chosen batch is: ``mining/hardness.py``.

Greedy hard-negative-class selection (Sohn 2016, section 3.2):

"We randomly select a class, then greedily add a new class that violates the triplet
constraint the most w.r.t. the selected classes till we reach N classes." With unit class
embeddings c_k, a candidate class c violates the triplet constraint most when it is most
similar to some already chosen class, so each pick is

    next = argmax_{c not chosen} score(c),   score(c) = max_{s chosen} c^T s

kept as a running maximum as classes are chosen. Two ways to keep it, one contract:

- exact (``neighbours=None``): after each pick s, one matrix-vector product [C, D] x [D]
  raises every class's score; O(N C D) in all: seconds at N=1000 of C=100,000 on a CPU
  (``dml-dist bench mining`` measures it), so it is the path for small banks (the service
  switches at ``mining.exact_below_classes``).
- graph-restricted (``neighbours`` = [C, k] nearest-neighbour lists, see ``mining/graph.py``):
  a pick s raises only the scores of its k neighbours, by their similarity to s computed from
  the current embeddings (the graph only says who may be close; similarities are never stale).
  Scores sit in a lazy max-heap, so a selection costs O(N k (D + log(N k))): milliseconds at
  any C. When no open candidate has a score (the chosen set's neighbourhoods are used up) the
  next class is drawn at random among the rest, as the first one was. With full neighbour
  lists (k = C - 1) the graph path makes exactly the exact path's picks.

Ties are broken at random: one random permutation of the classes ranks them, and among equal
scores the class ranked first wins; the first class, and any class drawn when nothing is
scored, is the first open class in that order. A share ``random_share`` of the N classes is
drawn uniformly from all classes not yet chosen (exploration: it also brings classes the bank
has never seen). Everything is a pure function of the inputs and ``seed``.
"""

from __future__ import annotations

import heapq

import numpy as np


def select_hard_classes(
    class_embeddings: np.ndarray,
    n: int,
    seed: int = 0,
    eligible: np.ndarray | None = None,
    random_share: float = 0.0,
    neighbours: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of N distinct classes: one random, then greedily the hardest, then a random share.

    Args:
        class_embeddings: [C, D] class embeddings (unit rows: similarity is the dot product).
        n: number of classes to choose (N of an N-pair batch, or P of a P x K batch).
        seed: the choice is a pure function of the inputs and this seed.
        eligible: optional [C] bool mask of the classes the greedy part may pick (for example
            those with an embedding); the random share draws from all classes.
        random_share: share of the N classes drawn uniformly from the classes not yet chosen.
        neighbours: optional [C, k] int neighbour lists (-1 = none); when given, the greedy
            search is restricted to them (graph path), otherwise it is exact.
    Returns:
        int64 array [n]: greedy picks first (in pick order), then the random ones.
    """
    num_classes = class_embeddings.shape[0]
    if n > num_classes:
        raise ValueError(f"select_hard_classes: n={n} is larger than the {num_classes} classes")
    if not 0.0 <= random_share <= 1.0:
        raise ValueError(f"select_hard_classes: random_share={random_share} is not in [0, 1]")
    if neighbours is not None and neighbours.shape[0] != num_classes:
        raise ValueError(f"select_hard_classes: neighbours has {neighbours.shape[0]} rows for {num_classes} classes")
    open_C = np.ones(num_classes, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool).copy()
    rng = np.random.default_rng(seed)
    order_C = rng.permutation(num_classes)  # the random ranking that breaks ties
    num_hard = min(n - int(round(n * random_share)), int(open_C.sum()))
    picks: list[int] = []
    if num_hard > 0:
        emb_CD = np.ascontiguousarray(class_embeddings, dtype=np.float32)
        if neighbours is None:
            picks = _greedy_exact(emb_CD, num_hard, order_C, open_C)
        else:
            picks = _greedy_graph(emb_CD, num_hard, order_C, open_C, np.asarray(neighbours, dtype=np.int64))
    num_random = n - len(picks)
    if num_random > 0:
        chosen = np.zeros(num_classes, dtype=bool)
        chosen[picks] = True
        rest = rng.choice(np.flatnonzero(~chosen), size=num_random, replace=False)
        picks.extend(int(c) for c in rest)
    return np.asarray(picks, dtype=np.int64)


def _greedy_exact(emb_CD: np.ndarray, num_hard: int, order_C: np.ndarray, open_C: np.ndarray) -> list[int]:
    """Running max over all classes; works in the permuted order so argmax's first hit is the tie-break."""
    emb_perm = emb_CD[order_C]
    open_perm = open_C[order_C]
    max_sim = np.full(len(order_C), -np.inf, dtype=np.float32)
    pick = int(np.argmax(open_perm))  # the first open class in the random order
    picks: list[int] = []
    while True:
        picks.append(int(order_C[pick]))
        open_perm[pick] = False
        if len(picks) == num_hard:
            return picks
        np.maximum(max_sim, emb_perm @ emb_perm[pick], out=max_sim)
        pick = int(np.argmax(np.where(open_perm, max_sim, -np.inf)))


def _greedy_graph(
    emb_CD: np.ndarray, num_hard: int, order_C: np.ndarray, open_C: np.ndarray, neighbours_CK: np.ndarray
) -> list[int]:
    """Running max over the chosen classes' neighbour lists, kept in a lazy max-heap.

    Heap entries are (-score, rank, class); an entry is stale when the class was chosen since or
    its score rose after the push, and is skipped when popped.
    """
    rank_C = np.empty(len(order_C), dtype=np.int64)
    rank_C[order_C] = np.arange(len(order_C))
    score_C = np.full(len(order_C), -np.inf, dtype=np.float32)
    heap: list[tuple[float, int, int]] = []
    cursor = 0  # next position of order_C to look at for an unscored random pick

    def next_random() -> int:
        nonlocal cursor
        while not open_C[order_C[cursor]]:
            cursor += 1
        return int(order_C[cursor])

    pick = next_random()
    picks: list[int] = []
    while True:
        picks.append(pick)
        open_C[pick] = False
        if len(picks) == num_hard:
            return picks
        nbr = neighbours_CK[pick]
        nbr = nbr[nbr >= 0]
        nbr = nbr[open_C[nbr]]
        if nbr.size:
            sims = emb_CD[nbr] @ emb_CD[pick]
            raised = sims > score_C[nbr]
            nbr, sims = nbr[raised], sims[raised]
            score_C[nbr] = sims
            for c, s, r in zip(nbr.tolist(), sims.tolist(), rank_C[nbr].tolist(), strict=True):
                heapq.heappush(heap, (-s, r, c))
        pick = -1
        while heap:
            neg_score, _, c = heapq.heappop(heap)
            if open_C[c] and -neg_score >= score_C[c]:
                pick = c
                break
        if pick < 0:
            pick = next_random()


def select_seed_neighbours(
    class_embeddings: np.ndarray,
    n: int,
    seed: int = 0,
    eligible: np.ndarray | None = None,
    group_size: int = 2,
    hard_share: float = 1.0,
    top_k: int = 10,
    temperature: float = 0.1,
    neighbours: np.ndarray | None = None,
    similarity_cap: float = 1.0,
    candidate_pool: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Random seed classes, each joined by neighbours sampled among its top-K nearest classes.

    The batch holds G = floor(n * hard_share / g) groups of g = ``group_size`` classes, then
    random classes up to n. A group starts with a seed drawn uniformly from the eligible classes
    not yet chosen; each of its g - 1 neighbours is drawn, without replacement, from the seed's
    K = ``top_k`` most similar open eligible classes with probability

        p(c) = softmax_c(sim(seed, c) / temperature)

    (doppelganger mining, Smirnov 2017; stochastic class-based hard example mining, Suh 2019).
    Seeds keep the batch spread over the whole space (Sohn's greedy chain collapses it into one
    cluster of confusable classes); the softmax keeps the neighbour choice random among near
    ties, so one pair of classes is not drawn every time. Where a seed is not eligible (no trusted
    embedding) or has fewer open neighbours than g - 1, the gap is filled at random.

    Measured (``docs/results/mining.md``, held-out Recall@1 at equal steps): with g = 2, K = 10,
    temperature 0.1 and the service's warm-up schedule it matches random classes within the
    seed spread but does not beat them (quickstart, 3 seeds: 0.895 +- 0.011 against 0.898 +-
    0.012). In a one-seed pilot with 20,000 classes and N = 64, groups of 4 (top 20), mining
    only among classes refreshed within 100 steps, and mining from step 50 all lost (0.659,
    0.657, 0.665 against 0.676 random); top 100 tied (0.676); hence the defaults.

    Two options (both off by default, and then the draws are unchanged): a candidate pool
    (BatchSampler, Yang et al. KDD 2023) takes a seed's top K among P classes sampled at random
    for that seed instead of among all classes, so a seed's neighbours are hard for the pool but
    differ from draw to draw; a similarity cap skips a seed or neighbour whose centre has cosine
    above the cap with a trusted class already chosen (near-duplicate classes, often one class
    under two labels, make negatives that cannot be learnt). The random fill is not checked.

    Args:
        class_embeddings: [C, D] unit class embeddings.
        n: classes to choose.
        seed: the choice is a pure function of the inputs and this seed.
        eligible: [C] bool, classes with a trusted embedding: a seed needs one to have
            neighbours, and neighbours are drawn among them. Seeds and the random fill draw
            from all classes.
        group_size: g >= 2, classes per group (the seed and g - 1 neighbours).
        hard_share: share of the n classes that are in groups, in [0, 1].
        top_k: K, the seed's nearest classes a neighbour is sampled from.
        temperature: of the softmax over those K similarities (> 0).
        neighbours: optional [C, k] neighbour lists (``graph.py``); when given, a seed's
            candidates are its listed neighbours (the first K open ones) instead of an exact
            scan of all classes (O(C D) per seed).
        similarity_cap: cosine above which two trusted classes may not share the groups; >= 1 = off.
        candidate_pool: P > 0: a seed's candidates are its top K among P open trusted classes
            sampled at random (O(P D) per seed; ``neighbours`` is then not used); 0 = all classes.
    Returns:
        (classes [n] int64: groups in order, seed first, then random classes;
         relied_on [n] bool: the classes chosen through the bank, i.e. neighbours).
    """
    num_classes = class_embeddings.shape[0]
    if n > num_classes:
        raise ValueError(f"select_seed_neighbours: n={n} is larger than the {num_classes} classes")
    if group_size < 2 or top_k < 1 or temperature <= 0 or not 0.0 <= hard_share <= 1.0:
        raise ValueError(
            f"select_seed_neighbours: group_size={group_size}, top_k={top_k}, temperature={temperature}, "
            f"hard_share={hard_share} out of range"
        )
    rng = np.random.default_rng(seed)
    trusted_C = np.ones(num_classes, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    open_C = np.ones(num_classes, dtype=bool)
    emb_CD = np.asarray(class_embeddings, dtype=np.float32)
    picks: list[int] = []
    relied: list[bool] = []
    num_groups = int(n * hard_share) // group_size
    seeds_pool = rng.permutation(num_classes)
    capped = similarity_cap < 1.0
    chosen_trusted: list[int] = []  # the cap is checked against these
    cursor = 0
    for _ in range(num_groups):
        while cursor < num_classes and (
            not open_C[seeds_pool[cursor]]
            or (capped and _over_cap(emb_CD, seeds_pool[cursor], chosen_trusted, trusted_C, similarity_cap))
        ):
            cursor += 1
        if cursor == num_classes:
            break
        s = int(seeds_pool[cursor])
        picks.append(s)
        relied.append(False)
        open_C[s] = False
        if not trusted_C[s]:  # no embedding to find its neighbours by: its slots go to the random fill
            continue
        chosen_trusted.append(s)
        if candidate_pool > 0:
            cand, sims = _pool_candidates(emb_CD, s, open_C & trusted_C, top_k, candidate_pool, rng)
        else:
            cand, sims = _seed_candidates(emb_CD, s, open_C & trusted_C, top_k, neighbours)
        if capped and cand.size:
            keep = (emb_CD[cand] @ emb_CD[chosen_trusted].T <= similarity_cap).all(axis=1)
            cand, sims = cand[keep], sims[keep]
        take = min(group_size - 1, cand.size)
        if take:
            logits = (sims - sims.max()) / temperature
            weights = np.exp(logits)
            chosen = rng.choice(cand.size, size=take, replace=False, p=weights / weights.sum())
            for c in cand[chosen].tolist():
                picks.append(int(c))
                relied.append(True)
                open_C[c] = False
                chosen_trusted.append(int(c))
    num_random = n - len(picks)
    if num_random > 0:
        rest = rng.choice(np.flatnonzero(open_C), size=num_random, replace=False)
        picks.extend(int(c) for c in rest)
        relied.extend([False] * num_random)
    return np.asarray(picks, dtype=np.int64), np.asarray(relied, dtype=bool)


def _over_cap(emb_CD: np.ndarray, c: int, chosen: list[int], trusted_C: np.ndarray, cap: float) -> bool:
    """Class c is trusted and its centre has cosine above ``cap`` with a chosen trusted class."""
    return bool(trusted_C[c] and chosen and (emb_CD[chosen] @ emb_CD[c]).max() > cap)


def _pool_candidates(
    emb_CD: np.ndarray, s: int, open_C: np.ndarray, top_k: int, pool: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The seed's up to K most similar among ``pool`` open classes drawn at random (BatchSampler)."""
    open_ids = np.flatnonzero(open_C)
    sample = rng.choice(open_ids, size=min(pool, open_ids.size), replace=False) if open_ids.size else open_ids
    sims = emb_CD[sample] @ emb_CD[s]
    order = np.argsort(-sims, kind="stable")[:top_k]
    return sample[order].astype(np.int64), sims[order]


def _seed_candidates(
    emb_CD: np.ndarray, s: int, open_C: np.ndarray, top_k: int, neighbours: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The seed's up to K most similar open classes and their similarities (by the current bank)."""
    if neighbours is not None:
        cand = neighbours[s]
        cand = cand[cand >= 0]
        cand = cand[open_C[cand]][:top_k]
        return cand, emb_CD[cand] @ emb_CD[s]
    sims = emb_CD @ emb_CD[s]
    sims[~open_C] = -np.inf
    k = min(top_k, int(open_C.sum()))
    if k == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    cand = np.argpartition(-sims, k - 1)[:k]
    cand = cand[np.argsort(-sims[cand], kind="stable")]
    return cand.astype(np.int64), sims[cand]
