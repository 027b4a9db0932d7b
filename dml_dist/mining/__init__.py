"""Hard-negative-class mining: selection rules (seed + neighbours, Sohn's greedy; exact and on a
kNN graph; partition epochs over balanced clusters, ``partition.py`` and ``clustering.py``),
the window diagnostics (``diagnostics.py``), the class bank, the service and its Ray actor, the
answer it gives (``MiningAnswer``), the client with a bounded wait and the random null source, the names of
the class index spaces (``class_ids.py``), the stale-class refresh pass, and the batch's
violation rate (computed by the training side).

Selection rules (``mining.rule``), compared in ``docs/results/mining.md``:
- ``seed_neighbours``: random seeds, each with ``group_size - 1`` neighbours sampled by
  softmax(similarity / temperature) among its ``top_k`` nearest (``selection.py``).
- ``greedy``: Sohn's chain, each class the hardest for the chosen ones. Kept under its own name;
  it lowered held-out Recall@1 against random classes on every set measured there: the chain
  collapses a batch into one cluster of confusable classes.
- ``random``: the service answers random classes (the baseline, with the service running).
- ``partition``: epochs over balanced clusters of the class centres; every class is in one
  batch per epoch and a batch is N / s whole clusters, s growing after warm-up
  (``mining/partition.py``; its epoch is part of the state file).
``similarity_cap`` keeps classes with near-duplicate centres out of one batch (partition,
seed_neighbours). Every answer carries window figures (``mining/diagnostics.py``): distinct
classes, the Gini coefficient of class visits, and the share of mined pairs above the cap.
The service (``service.py``) schedules the mined share: 0 before ``warmup_steps``, then rising
linearly over ``ramp_steps`` to 1 - ``random_share``.
"""

from dml_dist.mining.bank import ClassBank
from dml_dist.mining.clustering import balanced_clusters
from dml_dist.mining.diagnostics import batch_diagnostics
from dml_dist.mining.graph import KnnGraph, build_knn_graph
from dml_dist.mining.hardness import nearest_negative_similarity, violation_rate
from dml_dist.mining.partition import PartitionSampler
from dml_dist.mining.selection import select_hard_classes, select_seed_neighbours

__all__ = [
    "ClassBank",
    "KnnGraph",
    "PartitionSampler",
    "balanced_clusters",
    "batch_diagnostics",
    "build_knn_graph",
    "nearest_negative_similarity",
    "select_hard_classes",
    "select_seed_neighbours",
    "violation_rate",
]
