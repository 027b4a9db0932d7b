"""Retrieval metrics on held-out classes with an exact faiss index, searched in blocks.

Two protocols:

- **leave-one-out** (CUB-200, Cars-196, SOP, and any shard directory): every embedding is a
  query against all the others, the query itself excluded;
- **query / gallery** (In-Shop): the query rows search the gallery rows only (a row that is in
  both is still never its own neighbour).

Embeddings are L2-normalized and searched by inner product (cosine). For a query q with R_q
relevant gallery items (same class, q itself excluded) and its ranked neighbours n_1, n_2, ...:

- Recall@K: 1 if a relevant item is among n_1..n_K, else 0 (the DML papers' "Recall@K"), averaged
  over every query (a query with no relevant item counts 0);
- precision@1, R-precision (relevant share of n_1..n_R) and MAP@R
  (1/R sum_{i <= R} P(i) rel(i), P(i) the precision at i; Musgrave, Belongie and Lim, "A Metric
  Learning Reality Check", ECCV 2020) are averaged over the queries with R_q >= 1, as
  pytorch-metric-learning's ``AccuracyCalculator`` does (the tests' oracle);
- NMI: k-means (faiss, fixed seed) with one centroid per class on the query embeddings, then the
  normalized mutual information of clusters and labels, I(Y; C) / ((H(Y) + H(C)) / 2) (the
  arithmetic normalization of scikit-learn's default; computed here, no scikit-learn needed).

Memory: queries are searched ``block_size`` at a time and every metric is a per-query sum, so
only a block x k_max neighbour table exists at once, k_max = max(max K, max R_q) (60,000 x 512
SOP embeddings with K up to 1,000: 1,024 x 1,001 ids per block). The index holds the gallery
(n x D floats); on a machine with GPUs (``faiss.get_num_gpus() > 0``, a faiss-gpu build) the
index and the k-means run there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class RetrievalReport:
    """Every metric of one evaluation; fractions in [0, 1]."""

    recall: dict[int, float]
    precision_at_1: float
    r_precision: float
    map_at_r: float
    nmi: float | None = None
    num_queries: int = 0
    num_gallery: int = 0
    num_classes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: Recall keys as strings (JSON object keys are)."""
        data = asdict(self)
        data["recall"] = {str(k): v for k, v in self.recall.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RetrievalReport:
        """The inverse of ``to_json``."""
        return cls(**{**data, "recall": {int(k): float(v) for k, v in data["recall"].items()}})


def normalize_rows(emb_ND: np.ndarray) -> np.ndarray:
    emb = np.ascontiguousarray(emb_ND, dtype=np.float32)
    return np.ascontiguousarray(emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12))


def retrieval_metrics(
    emb_ND: np.ndarray,
    labels_N: np.ndarray,
    ks: list[int],
    query_idx: np.ndarray | None = None,
    gallery_idx: np.ndarray | None = None,
    block_size: int = 1024,
    nmi: bool = False,
    seed: int = 0,
    use_gpu: bool | None = None,
) -> RetrievalReport:
    """All metrics of the module docstring; ``query_idx``/``gallery_idx`` select rows (default: all)."""
    if emb_ND.shape[0] != labels_N.shape[0]:
        raise ValueError(f"retrieval: {emb_ND.shape[0]} embeddings but {labels_N.shape[0]} labels")
    if not ks or any(k <= 0 for k in ks):
        raise ValueError(f"retrieval: K must be positive integers, got {ks}")
    if block_size <= 0:
        raise ValueError(f"eval.block_size: expected a positive integer, got {block_size}")
    n = emb_ND.shape[0]
    labels = np.asarray(labels_N, dtype=np.int64)
    queries = np.arange(n) if query_idx is None else np.asarray(query_idx, dtype=np.int64)
    gallery = np.arange(n) if gallery_idx is None else np.asarray(gallery_idx, dtype=np.int64)
    if queries.size == 0 or gallery.size == 0:
        raise ValueError(f"retrieval: {queries.size} queries and {gallery.size} gallery items; need both")
    emb = normalize_rows(emb_ND)
    use_gpu = _faiss().get_num_gpus() > 0 if use_gpu is None else use_gpu

    # Position of each row in the gallery (-1: not in it), to exclude a query from its own results.
    gallery_pos = np.full(n, -1, dtype=np.int64)
    gallery_pos[gallery] = np.arange(gallery.size)
    q_in_gallery = gallery_pos[queries] >= 0
    overlap = bool(q_in_gallery.any())
    g_labels = labels[gallery]
    classes, class_counts = np.unique(g_labels, return_counts=True)
    q_labels = labels[queries]
    where = np.searchsorted(classes, q_labels).clip(max=classes.size - 1)
    count_q = np.where(classes[where] == q_labels, class_counts[where], 0)
    relevant_q = count_q - q_in_gallery.astype(np.int64)  # R_q

    searchable = gallery.size - (1 if overlap else 0)
    k_max = max(1, min(max(max(ks), int(relevant_q.max(initial=0))), searchable))
    index = _flat_index(emb[gallery], use_gpu)

    recall_hits = {k: 0 for k in ks}
    p1_sum = rp_sum = map_sum = 0.0
    for start in range(0, queries.size, block_size):
        rows = queries[start : start + block_size]
        neighbours = _search_excluding_self(index, emb[rows], gallery_pos[rows], k_max + (1 if overlap else 0), k_max)
        hits_bk = g_labels[neighbours] == labels[rows][:, None]
        hits_bk &= neighbours >= 0
        any_hit = np.cumsum(hits_bk, axis=1) > 0
        for k in ks:
            recall_hits[k] += int(any_hit[:, min(k, k_max) - 1].sum())
        r_b = relevant_q[start : start + block_size]
        valid = r_b > 0
        if not valid.any():
            continue
        hits = hits_bk[valid]
        r = r_b[valid]
        within_r = np.arange(k_max)[None, :] < r[:, None]
        correct_cum = np.cumsum(hits & within_r, axis=1)
        p1_sum += float(hits[:, 0].sum())
        rp_sum += float((correct_cum[:, -1] / r).sum())
        precision_at_i = correct_cum / np.arange(1, k_max + 1)[None, :]
        map_sum += float(((precision_at_i * (hits & within_r)).sum(axis=1) / r).sum())
    num_valid = int((relevant_q > 0).sum())
    denominator = max(num_valid, 1)
    report = RetrievalReport(
        recall={k: recall_hits[k] / queries.size for k in ks},
        precision_at_1=p1_sum / denominator,
        r_precision=rp_sum / denominator,
        map_at_r=map_sum / denominator,
        num_queries=int(queries.size),
        num_gallery=int(gallery.size),
        num_classes=int(np.unique(labels[np.union1d(queries, gallery)]).size),
    )
    if nmi:
        report.nmi = kmeans_nmi(emb[queries], q_labels, seed=seed, use_gpu=use_gpu)
    return report


def _faiss() -> Any:
    """faiss, imported on first use: after ``quiet_libraries`` has set its logger, so a worker
    does not print faiss's INFO lines about the CPU builds it tries to load."""
    import faiss

    return faiss


def _flat_index(emb_GD: np.ndarray, use_gpu: bool) -> Any:
    faiss = _faiss()
    index: Any = faiss.IndexFlatIP(emb_GD.shape[1])
    if use_gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(emb_GD)
    return index


def _search_excluding_self(
    index: Any, emb_BD: np.ndarray, self_pos_B: np.ndarray, k_search: int, k_keep: int
) -> np.ndarray:
    """Neighbour gallery positions [B, k_keep], a query's own gallery row removed wherever it landed."""
    _, neighbours = index.search(emb_BD, k_search)
    is_self = neighbours == self_pos_B[:, None]
    # Stable sort moves the query's own row (ties can place it off column 0) to the end; when it
    # is not among the results at all, the last (farthest) column is dropped instead.
    order = np.argsort(is_self, axis=1, kind="stable")
    kept: np.ndarray = np.take_along_axis(neighbours, order, axis=1)[:, :k_keep]
    return kept


def kmeans_nmi(
    emb_ND: np.ndarray, labels_N: np.ndarray, seed: int = 0, use_gpu: bool = False, niter: int = 20
) -> float:
    """NMI of faiss k-means clusters (one centroid per class, fixed seed) against the labels."""
    emb = normalize_rows(emb_ND)
    num_clusters = int(np.unique(labels_N).size)
    if num_clusters < 2 or emb.shape[0] <= num_clusters:
        return 1.0 if num_clusters == 1 else 0.0
    kmeans = _faiss().Kmeans(
        emb.shape[1], num_clusters, niter=niter, seed=seed, gpu=use_gpu, verbose=False, min_points_per_centroid=1
    )
    kmeans.train(emb)
    _, assignment = kmeans.index.search(emb, 1)
    return normalized_mutual_information(labels_N, assignment[:, 0])


def normalized_mutual_information(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """I(A; B) / ((H(A) + H(B)) / 2) of two labelings of the same items (natural log)."""
    _, a = np.unique(labels_a, return_inverse=True)
    _, b = np.unique(labels_b, return_inverse=True)
    n = a.size
    joint = np.zeros((a.max() + 1, b.max() + 1), dtype=np.float64)
    np.add.at(joint, (a, b), 1.0)
    joint /= n
    p_a, p_b = joint.sum(axis=1), joint.sum(axis=0)
    nonzero = joint > 0
    mutual = float((joint[nonzero] * np.log(joint[nonzero] / np.outer(p_a, p_b)[nonzero])).sum())
    h_a = float(-(p_a[p_a > 0] * np.log(p_a[p_a > 0])).sum())
    h_b = float(-(p_b[p_b > 0] * np.log(p_b[p_b > 0])).sum())
    if h_a == 0.0 and h_b == 0.0:
        return 1.0  # both labelings put everything in one group
    return max(0.0, mutual / ((h_a + h_b) / 2))


def recall_at_k(emb_ND: np.ndarray, labels_N: np.ndarray, ks: list[int], block_size: int = 1024) -> dict[int, float]:
    """Leave-one-out Recall@K for each K in ``ks`` (see module docstring)."""
    return retrieval_metrics(emb_ND, labels_N, ks, block_size=block_size).recall


def format_recall_table(rows: dict[str, dict[int, float]]) -> str:
    """A text table: one row per named result, one column per K."""
    ks = sorted({k for recall in rows.values() for k in recall})
    name_width = max(len(name) for name in rows)
    header = " " * name_width + "".join(f"  R@{k:<5}" for k in ks)
    lines = [header]
    for name, recall in rows.items():
        lines.append(name.ljust(name_width) + "".join(f"  {recall[k]:.4f} " for k in ks))
    return "\n".join(lines)


def format_report_table(rows: dict[str, RetrievalReport]) -> str:
    """Like ``format_recall_table``, with precision@1, R-precision, MAP@R and NMI columns."""
    ks = sorted({k for report in rows.values() for k in report.recall})
    name_width = max(len(name) for name in rows)
    columns = [f"R@{k}" for k in ks] + ["P@1", "RP", "MAP@R", "NMI"]
    lines = [" " * name_width + "".join(f"  {c:<7}" for c in columns)]
    for name, r in rows.items():
        values = [r.recall[k] for k in ks] + [r.precision_at_1, r.r_precision, r.map_at_r]
        cells = [f"{v:.4f} " for v in values] + ["  -    " if r.nmi is None else f"{r.nmi:.4f} "]
        lines.append(name.ljust(name_width) + "".join(f"  {c}" for c in cells))
    return "\n".join(lines)
