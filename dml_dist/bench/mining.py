"""``dml-dist bench mining``: selection, graph build, bank update and refresh, against a training step.

Measured in one process, on the same machine, without Ray:
- selection of N classes from C at dimension D (defaults N=1000, C=100,000, D=512; random unit
  class embeddings, 25% random share): exact greedy (once: it takes seconds; skipped above
  100,000 classes), and on a k=32 kNN graph both rules, ``seed_neighbours`` (groups of 2, top
  10) and Sohn's ``greedy`` (median of ``repeats``);
- the bank's memory (C x D float32 plus the refresh steps) and the graph's (C x k int64), and the
  process's peak resident memory;
- the graph build (faiss; the service does it in a background thread, never in a selection);
- a bank update with one step's class embeddings (N=320 x D=128, the quickstart, and
  N=1000 x D=512);
- a refresh pass's forward (64 stale classes x 2 images, no gradient);
- the reference: a quickstart-like training step, ``small_cnn`` forward+backward on 640 images
  32 x 32 (320 classes x 2) with the N-pair loss, on one thread (as each CPU worker runs).
Each figure is also given as a share of that step. The service selects step t+1 while step t
trains, so selection time is hidden as long as it stays below a step; bank updates and the
refresh pass run every step / every ``refresh_every`` steps.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch

from dml_dist.bench.timing import median_seconds
from dml_dist.config import ModelConfig
from dml_dist.mining.bank import ClassBank
from dml_dist.mining.graph import build_knn_graph
from dml_dist.mining.selection import select_hard_classes, select_seed_neighbours


def _unit(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _timed(fn: Any) -> tuple[float, Any]:
    import time

    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def training_step_seconds(repeats: int, batch: int = 640, image_size: int = 32) -> float:
    """Median fwd+bwd time of the quickstart's model and loss on one thread."""
    from dml_dist.losses import build_loss
    from dml_dist.models.embedder import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_model(ModelConfig())
        loss_fn = build_loss("npair_mc", l2_reg=0.002, temperature=0.1)
        images = torch.randn(batch, 1, image_size, image_size)
        labels = torch.arange(batch // 2).repeat_interleave(2)

        def step() -> None:
            model.zero_grad(set_to_none=True)
            loss_fn(model(images), labels).backward()

        return median_seconds(step, repeats)
    finally:
        torch.set_num_threads(threads)


def refresh_forward_seconds(repeats: int, images: int = 128, image_size: int = 32) -> float:
    """Median no-grad forward of a refresh pass's images (64 classes x 2) on one thread."""
    from dml_dist.models.embedder import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_model(ModelConfig()).eval()
        batch = torch.randn(images, 1, image_size, image_size)

        def forward() -> None:
            with torch.no_grad():
                model(batch)

        return median_seconds(forward, repeats)
    finally:
        torch.set_num_threads(threads)


def run_mining_bench(
    num_classes: int = 100_000,
    n: int = 1000,
    dim: int = 512,
    k: int = 32,
    repeats: int = 5,
    exact: bool | None = None,
) -> dict[str, Any]:
    """Time the mining service's parts against a training step; print a table, return figures."""
    import resource

    if exact is None:
        exact = num_classes <= 100_000
    rng = np.random.default_rng(0)
    emb_CD = _unit(rng, num_classes, dim)
    bank = ClassBank(num_classes, dim, momentum=0.5)
    bank.embeddings = emb_CD
    bank.last_step[:] = 0
    bank_bytes = bank.embeddings.nbytes + bank.last_step.nbytes
    step_s = training_step_seconds(repeats)
    build_s, graph = _timed(lambda: build_knn_graph(emb_CD, k, seed=0))
    seeds = iter(range(10_000))
    graph_s = median_seconds(
        lambda: select_hard_classes(emb_CD, n, seed=next(seeds), random_share=0.25, neighbours=graph.neighbours),
        repeats,
    )
    seed_neighbours_s = median_seconds(
        lambda: select_seed_neighbours(emb_CD, n, seed=next(seeds), hard_share=0.75, neighbours=graph.neighbours),
        repeats,
    )
    exact_s = _timed(lambda: select_hard_classes(emb_CD, n, seed=0, random_share=0.25))[0] if exact else None
    del bank
    updates: dict[str, float] = {}
    for rows, width in ((320, 128), (1000, min(dim, 512))):
        bank = ClassBank(num_classes, width, momentum=0.5)
        ids = rng.choice(num_classes, size=rows, replace=False)
        observed = _unit(rng, rows, width)
        updates[f"{rows}x{width}"] = median_seconds(partial(bank.update, 1, ids, observed), repeats)
    refresh_s = refresh_forward_seconds(repeats)
    rows_out: list[tuple[str, float | None]] = [
        ("training step (quickstart-like, 640 img fwd+bwd, 1 thread)", step_s),
        (f"selection exact   N={n} of C={num_classes} D={dim}", exact_s),
        (f"selection graph   N={n} of C={num_classes} D={dim} k={k}", graph_s),
        (f"selection seed_neighbours (graph) N={n} of C={num_classes}", seed_neighbours_s),
        (f"graph build ({graph.method}, background)", build_s),
        *((f"bank update {key} (one step)", value) for key, value in updates.items()),
        ("refresh pass forward (64 classes x 2 img, no grad)", refresh_s),
    ]
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(f"{'mining bench':<62}{'seconds':>10}{'x step':>9}")
    for label, seconds in rows_out:
        shown = f"{seconds:>10.4f}{seconds / step_s:>9.3f}" if seconds is not None else f"{'-':>10}{'-':>9}"
        print(f"{label:<62}{shown}")
    graph_bytes = graph.neighbours.nbytes
    print(
        f"bank {bank_bytes / 2**20:.0f} MiB, graph {graph_bytes / 2**20:.0f} MiB, peak RSS {peak_rss / 2**30:.2f} GiB"
    )
    return {
        "suite": "mining",
        "num_classes": num_classes,
        "n": n,
        "dim": dim,
        "k": k,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "step_seconds": step_s,
        "selection_exact_seconds": exact_s,
        "selection_graph_seconds": graph_s,
        "selection_seed_neighbours_graph_seconds": seed_neighbours_s,
        "bank_bytes": bank_bytes,
        "graph_bytes": graph_bytes,
        "peak_rss_bytes": peak_rss,
        "graph_build_seconds": build_s,
        "graph_method": graph.method,
        "bank_update_seconds": updates,
        "refresh_forward_seconds": refresh_s,
        "selection_graph_over_step": graph_s / step_s,
        "selection_exact_over_step": exact_s / step_s if exact_s is not None else None,
    }
