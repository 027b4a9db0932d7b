"""A k-nearest-neighbour graph over the class bank (faiss), for graph-restricted selection.

The greedy selection only ever needs, for a chosen class, the classes most similar to it; a
[C, k] table of each class's k nearest classes (by inner product of unit embeddings, self
excluded) restricts its search to them (``selection.py``). Building the table is the costly
part, so the mining service builds it in a background thread every so many steps, never inside
a selection; the selection recomputes the similarities of the listed neighbours from the
current bank, so an older graph only means slightly older candidate lists.

Index choice: an exact ``IndexFlatIP`` up to ``ivf_above`` classes (C^2 D work, fine up to a
few ten thousand classes); above it an ``IndexIVFFlat`` with 2 sqrt(C) lists (about balancing
the scan of the centroids against the scan of the lists), trained on a sample of 48 points per
list and searched with ``nprobe`` lists. IVF is approximate: a true neighbour in an unvisited
list is missed, which only makes a greedy step take the best of the neighbours found. Only
eligible classes (those with an embedding) enter the index; the others get empty lists (-1).
With GPUs (``faiss.get_num_gpus() > 0``, a faiss-gpu build) the index is moved to them.
``dml-dist bench mining`` measures the build (nearly all of it the search) at C=100,000.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class KnnGraph:
    """Neighbour lists [C, k] (class positions, -1 = none) and how the graph was built."""

    neighbours: np.ndarray
    step: int
    build_seconds: float
    method: str


def build_knn_graph(
    emb_CD: np.ndarray,
    k: int,
    eligible: np.ndarray | None = None,
    step: int = 0,
    ivf_above: int = 20_000,
    nprobe: int = 6,
    use_gpu: bool | None = None,
    seed: int = 0,
) -> KnnGraph:
    """The k nearest other classes of every eligible class, by inner product.

    Args:
        emb_CD: [C, D] unit class embeddings.
        k: neighbours per class.
        eligible: [C] bool, classes to index and query (default all).
        step: the bank step the embeddings are from (recorded in the result).
        ivf_above: use an approximate IVF index above this many eligible classes.
        nprobe: inverted lists visited per query (IVF only).
        use_gpu: move the index to the GPUs; None = when faiss sees one.
        seed: seed of the IVF training sample and k-means.
    """
    import faiss

    started = time.perf_counter()
    num_classes, dim = emb_CD.shape
    neighbours_CK = np.full((num_classes, k), -1, dtype=np.int64)
    ids = np.flatnonzero(np.ones(num_classes, dtype=bool) if eligible is None else eligible)
    if ids.size < 2 or k <= 0:
        return KnnGraph(neighbours_CK, step, time.perf_counter() - started, "empty")
    x = np.ascontiguousarray(emb_CD[ids], dtype=np.float32)
    search_k = min(k + 1, ids.size)
    if ids.size <= ivf_above:
        index: Any = faiss.IndexFlatIP(dim)
        method = "flat"
    else:
        nlist = max(1, int(2 * np.sqrt(ids.size)))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        train_size = min(ids.size, 48 * nlist)  # faiss wants at least 39 points per centroid
        sample = np.random.default_rng(seed).choice(ids.size, size=train_size, replace=False)
        index.train(x[np.sort(sample)])
        index.nprobe = nprobe
        method = f"ivf{nlist},nprobe{nprobe}"
    if use_gpu is None:
        use_gpu = getattr(faiss, "get_num_gpus", lambda: 0)() > 0
    if use_gpu:
        index = faiss.index_cpu_to_all_gpus(index)
        method += ",gpu"
    index.add(x)
    _, found_MK = index.search(x, search_k)
    # Map positions in x back to class positions; drop self matches (and pad with -1).
    found_MK = np.where(found_MK >= 0, ids[np.clip(found_MK, 0, None)], -1)
    drop_MK = (found_MK == ids[:, None]) | (found_MK < 0)
    keep_first = np.argsort(drop_MK, axis=1, kind="stable")  # kept entries first, in rank order
    found_MK = np.take_along_axis(found_MK, keep_first, axis=1)
    found_MK[np.take_along_axis(drop_MK, keep_first, axis=1)] = -1
    width = min(k, found_MK.shape[1])
    neighbours_CK[ids, :width] = found_MK[:, :width]
    return KnnGraph(neighbours_CK, step, time.perf_counter() - started, method)
