"""Hard-negative-class mining: selection rules (seed + neighbours, Sohn's greedy; exact and on a
kNN graph), the class bank, its Ray actor, the client with a bounded wait, the stale-class
refresh pass, and the batch's violation rate (computed by the training side)."""

from dml_dist.mining.bank import ClassBank
from dml_dist.mining.graph import KnnGraph, build_knn_graph
from dml_dist.mining.selection import (
    nearest_negative_similarity,
    select_hard_classes,
    select_seed_neighbours,
    violation_rate,
)

__all__ = [
    "ClassBank",
    "KnnGraph",
    "build_knn_graph",
    "nearest_negative_similarity",
    "select_hard_classes",
    "select_seed_neighbours",
    "violation_rate",
]
