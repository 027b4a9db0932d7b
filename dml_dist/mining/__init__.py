"""Hard-negative-class mining: selection rules (seed + neighbours, Sohn's greedy; exact and on a
kNN graph; partition epochs over balanced clusters, ``partition.py`` and ``clustering.py``),
the window diagnostics (``diagnostics.py``), the class bank, the service and its Ray actor, the answer it gives
(``MiningAnswer``), the client with a bounded wait and the random null source, the names of
the class index spaces (``class_ids.py``), the stale-class refresh pass, and the batch's
violation rate (computed by the training side)."""

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
