"""Recall@K on held-out classes with an exact faiss index.

Every embedding is a query against all the others (leave-one-out, the protocol of CUB-200,
Cars-196 and SOP). Embeddings are L2-normalized and searched by inner product (cosine).
Recall@K is the share of queries with at least one same-class item among their K nearest
neighbours, the query itself excluded.
"""

from __future__ import annotations

import faiss
import numpy as np


def recall_at_k(emb_ND: np.ndarray, labels_N: np.ndarray, ks: list[int]) -> dict[int, float]:
    """Recall@K for each K in ``ks`` (see module docstring)."""
    if emb_ND.shape[0] != labels_N.shape[0]:
        raise ValueError(f"recall_at_k: {emb_ND.shape[0]} embeddings but {labels_N.shape[0]} labels")
    emb = np.ascontiguousarray(emb_ND, dtype=np.float32)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    k_max = min(max(ks) + 1, emb.shape[0])
    _, neighbours_NK = index.search(emb, k_max)
    # Drop the query itself wherever faiss placed it (ties can move it off column 0).
    is_self = neighbours_NK == np.arange(emb.shape[0])[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")
    neighbours_NK = np.take_along_axis(neighbours_NK, order, axis=1)[:, : k_max - 1]
    hits_NK = labels_N[neighbours_NK] == labels_N[:, None]
    first_hit_rank = np.cumsum(hits_NK, axis=1) > 0
    return {k: float(first_hit_rank[:, min(k, k_max - 1) - 1].mean()) for k in ks}


def format_recall_table(rows: dict[str, dict[int, float]]) -> str:
    """A text table: one row per named result, one column per K."""
    ks = sorted({k for recall in rows.values() for k in recall})
    name_width = max(len(name) for name in rows)
    header = " " * name_width + "".join(f"  R@{k:<5}" for k in ks)
    lines = [header]
    for name, recall in rows.items():
        lines.append(name.ljust(name_width) + "".join(f"  {recall[k]:.4f} " for k in ks))
    return "\n".join(lines)
