"""The two optional training components' config sections: the hard-negative-class mining
service (``mining/``) and cross-batch memory (``losses/memory.py``).

Each section checks its own fields when it is built, as in ``sections.py``; whether the loss
takes memory, and memory against the global batch, are checked by ``ExperimentConfig``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from dml_dist.config.fields import Bool, Float, Int, Section, Str, one_of

MINING_RULES = ("seed_neighbours", "greedy", "random", "partition")


class MiningConfig(Section):
    """The hard-negative-class mining service: which classes each batch holds (``mining/``).

    The defaults are the rule measured best in ``docs/results/mining.md``; it does not beat
    random classes there (3 seeds: the quickstart, and 20,000 classes with N = 64 up to 1,200
    steps), so mining is off unless a config turns it on (the Sohn reproductions do)."""

    path = "mining"

    enabled: Bool = False
    """Run the mining service; false = random classes and no service."""
    rule: Annotated[Str, one_of(*MINING_RULES, expected=f"one of {', '.join(MINING_RULES)}")] = "seed_neighbours"
    """Selection rule: ``seed_neighbours`` (random seed classes, each with neighbours sampled
    among its nearest), ``greedy`` (Sohn 2016: a chain of the hardest classes), ``random``, or
    ``partition`` (epochs over balanced clusters of the class centres: every class once per
    epoch, a batch is N / s whole clusters; ``mining/partition.py``). ``partition`` uses
    ``warmup_steps``, ``warmup_coverage``, ``fresh_within_steps`` and the ``partition_*`` fields,
    not ``random_share`` or ``ramp_steps``."""
    random_share: Float = Field(0.25, ge=0, le=1)
    """Share of each batch's classes drawn at random once mining runs (the rest is mined)."""
    group_size: Int = Field(2, ge=2)
    """seed_neighbours: classes per group, the seed and group_size - 1 sampled neighbours."""
    top_k: Int = Field(10, gt=0)
    """seed_neighbours: a neighbour is sampled among the seed's top_k most similar classes."""
    temperature: Float = Field(0.1, gt=0)
    """seed_neighbours: neighbours are drawn with probability softmax(similarity / temperature)."""
    candidate_pool: Int = Field(0, ge=0)
    """seed_neighbours: 0 = a seed's top_k among all classes; P > 0 = among P classes sampled at
    random for each seed (BatchSampler, KDD 2023: hard, but not always the same neighbours)."""
    similarity_cap: Float = Field(1.0, gt=0, le=1)  # 1 = off; a cap <= 0 leaves no feasible batch
    """No two classes whose bank centres have cosine above this share a batch; 1.0 = off.
    partition: enforced by swapping classes between batches; seed_neighbours: a seed or
    neighbour above the cap with a class already chosen is skipped (the random fill is not checked)."""
    partition_double_every_steps: Int = Field(200, ge=0)
    """partition: after warm-up the cluster size s is 2, doubling every this many steps; 0 = at once the largest."""
    partition_max_cluster_size: Int = Field(64, ge=1)
    """partition: s is at most the largest power of two dividing N and <= min(N / 4, this)."""
    partition_recluster_steps: Int = Field(100, ge=0)
    """partition: the classes still to visit in the epoch are re-clustered every this many steps
    (and when s changes), used from the next batch; 0 = only when s changes and at each epoch."""
    warmup_steps: Int = Field(150, ge=0)
    """Random classes before this step (a model at step 0 knows no hard classes)."""
    ramp_steps: Int = Field(100, ge=0)
    """After warm-up, the mined share rises linearly to 1 - random_share over this many steps."""
    fresh_within_steps: Int = Field(0, ge=0)
    """Mine only among classes refreshed within this many steps of the selection; 0 = any age."""
    warmup_coverage: Float = Field(0.0, ge=0, le=1)
    """Random classes until this share of training classes has an embedding in the bank (greedy
    wants about 0.9: a chain among a few known classes repeats them; seed_neighbours needs none)."""
    momentum: Float = Field(0.5, ge=0, lt=1)
    """Bank update: new = normalize(momentum * old + (1 - momentum) * observed)."""
    timeout_s: Float = Field(2.0, gt=0)
    """Longest wait for the service's answer before falling back to random classes."""
    refresh_after_steps: Int = Field(50, gt=0)
    """R: a class not refreshed for this many steps is stale; rank 0 re-embeds stale classes."""
    refresh_every: Int = Field(10, ge=0)
    """Steps between two refresh passes over stale classes on rank 0; 0 = never."""
    refresh_max_classes: Int = Field(64, gt=0)
    """Most stale classes one refresh pass re-embeds (the oldest first)."""
    refresh_images_per_class: Int = Field(2, gt=0)
    """Images embedded per stale class in a refresh pass (forward only, no gradient)."""
    exact_below_classes: Int = Field(20000, ge=0)
    """Exact search below this many classes; at or above it, search on a kNN graph of the classes."""
    num_neighbours: Int = Field(32, gt=0)
    """k of the kNN graph of the classes that restricts the search (large banks)."""
    graph_rebuild_steps: Int = Field(50, ge=0)
    """A new kNN graph every this many steps, built in the background and used this many steps later."""
    save_every_steps: Int = Field(100, ge=0)
    """The service saves its state to the run directory every this many steps; 0 = only at checkpoints."""


class MemoryConfig(Section):
    """Cross-batch memory (XBM, Wang et al. CVPR 2020): the last M global embeddings as extra
    candidates without gradient (``dml_dist/losses/memory.py``). Off by default."""

    path = "memory"

    size: Int = Field(0, ge=0)
    """M: rows kept, the newest rows of the global batches (the current batch's among them); 0 = off."""
    weight: Float = Field(1.0, ge=0)
    """w: the loss is L(batch vs batch) + w * L(batch vs memory), as XBM (1 in its configs)."""
    start_step: Int = Field(0, ge=0)
    """First step (0-based) that writes and uses the memory; XBM starts after 1,000-2,000 of
    35,000 iterations, once embeddings drift slowly."""
