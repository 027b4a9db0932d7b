"""Hard-negative-class mining: selection (exact and on a kNN graph), the class bank, its Ray actor,
the client with a bounded wait, and the stale-class refresh pass."""

from dml_dist.mining.bank import ClassBank
from dml_dist.mining.graph import KnnGraph, build_knn_graph
from dml_dist.mining.selection import nearest_negative_similarity, select_hard_classes

__all__ = ["ClassBank", "KnnGraph", "build_knn_graph", "nearest_negative_similarity", "select_hard_classes"]
