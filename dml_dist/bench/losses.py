"""``dml-dist bench losses``: forward+backward time of each loss at N embeddings, D = 512.

Baselines measured in the same run: the floor, the bare N x N x D similarity matmul forward and
backward (``(E @ E.T).sum().backward()``), and pytorch-metric-learning's implementation of the
same loss when it is installed. Batches hold N/2 classes x 2 images (N-pair construction).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dml_dist.bench.timing import median_seconds
from dml_dist.losses import build_loss

DIM = 512


def _fwd_bwd(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], emb: torch.Tensor, labels: torch.Tensor):  # type: ignore[no-untyped-def]
    def run() -> None:
        leaf = emb.detach().requires_grad_(True)
        loss_fn(leaf, labels).backward()

    return run


def _floor(emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (emb @ emb.T).sum()


def _reference_losses() -> dict[str, Any]:
    try:
        from pytorch_metric_learning import losses as pml
    except ImportError:
        return {}
    return {"npair_mc": pml.NPairsLoss()}


def run_loss_bench(sizes: list[int], repeats: int = 7) -> dict[str, Any]:
    """Time every registered loss against the floor and pytorch-metric-learning; print a table."""
    torch.manual_seed(0)
    references = _reference_losses()
    rows: list[dict[str, Any]] = []
    for n in sizes:
        emb = torch.randn(n, DIM)
        labels = torch.arange(n // 2).repeat_interleave(2)
        floor = median_seconds(_fwd_bwd(_floor, emb, labels), repeats)
        for name in ("npair_mc",):
            ours = median_seconds(_fwd_bwd(build_loss(name), emb, labels), repeats)
            row: dict[str, Any] = {
                "loss": name,
                "n": n,
                "floor_ms": floor * 1e3,
                "ours_ms": ours * 1e3,
                "ours_over_floor": ours / floor,
            }
            if name in references:
                ref = median_seconds(_fwd_bwd(references[name], emb, labels), repeats)
                row.update(pml_ms=ref * 1e3, ours_over_pml=ours / ref)
            rows.append(row)
    print(f"{'loss':<12}{'N':>6}{'floor ms':>10}{'ours ms':>10}{'pml ms':>10}{'ours/floor':>12}{'ours/pml':>10}")
    for r in rows:
        pml_ms = f"{r['pml_ms']:.2f}" if "pml_ms" in r else "-"
        ratio = f"{r['ours_over_pml']:.2f}" if "ours_over_pml" in r else "-"
        print(
            f"{r['loss']:<12}{r['n']:>6}{r['floor_ms']:>10.2f}{r['ours_ms']:>10.2f}{pml_ms:>10}{r['ours_over_floor']:>12.2f}{ratio:>10}"
        )
    return {"suite": "losses", "dim": DIM, "threads": torch.get_num_threads(), "repeats": repeats, "rows": rows}
