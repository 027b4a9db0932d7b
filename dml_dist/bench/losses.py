"""``dml-dist bench losses``: forward+backward time of each loss at N embeddings, D = 512.

Baselines measured in the same run: the floor, the bare N x N x D similarity matmul forward and
backward (``(E @ E.T).sum().backward()``), and pytorch-metric-learning's implementation of the
same loss when it is installed, configured as the tests configure it to match ours. The three
are called in turn within each repeat, and each ratio is the median of the per-repeat ratios.
Batches hold N/2 classes x 2 images (N-pair construction). Each variant below is one row; ``triplet`` is timed
with all, semi-hard and hard (batch-hard) triplets.

With ``memory_sizes`` (cross-batch memory, ``losses/memory.py``), each loss that takes memory is
also timed as L_batch + L_memory with a full memory of M rows, against the floor of its
B x (N + M) x D similarity work: ``(E @ E.T).sum() + (E @ Mem.T).sum()`` forward and backward,
the memory without gradient. The memory holds earlier global batches of N/2 classes x 2 images
drawn from 2,000 classes (the procedural training set), so an anchor meets a few positives in it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch

from dml_dist.bench.timing import interleaved_times, median_ratio
from dml_dist.losses import build_loss
from dml_dist.losses.memory import CrossBatchMemory, LossWithMemory

MEMORY_POOL_CLASSES = 2000

DIM = 512


def _fwd_bwd(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], emb: torch.Tensor, labels: torch.Tensor):  # type: ignore[no-untyped-def]
    def run() -> None:
        leaf = emb.detach().requires_grad_(True)
        loss_fn(leaf, labels).backward()

    return run


def _floor(emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (emb @ emb.T).sum()


# (row name, registry name, hyperparameters)
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("contrastive", "contrastive", {}),
    ("triplet[all]", "triplet", {"mining": "all"}),
    ("triplet[semihard]", "triplet", {"mining": "semihard"}),
    ("triplet[hard]", "triplet", {"mining": "hard"}),
    ("tuplet", "tuplet", {}),
    ("npair_mc", "npair_mc", {}),
    ("npair_ovo", "npair_ovo", {}),
    ("angular", "angular", {}),
    ("angular+npair", "angular", {"with_npair": True}),
    ("lifted", "lifted", {}),
    ("multi_similarity", "multi_similarity", {}),
    ("nca", "nca", {}),
    ("histogram", "histogram", {}),
    ("binomial", "binomial", {}),
    ("margin", "margin", {}),
    ("dro_topk", "dro_topk", {}),
    ("dro_topk_pn", "dro_topk_pn", {}),
    ("dro_kl", "dro_kl", {}),
]


def _reference_losses() -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    try:
        from pytorch_metric_learning import losses as pml
        from pytorch_metric_learning import miners
        from pytorch_metric_learning.distances import DotProductSimilarity, LpDistance
    except ImportError:
        return {}

    def mined(loss: Any, miner: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return lambda emb, labels: loss(emb, labels, miner(emb, labels))

    sq = LpDistance(power=2)
    triplet = pml.TripletMarginLoss(margin=0.2, distance=sq)
    return {
        "contrastive": pml.ContrastiveLoss(),
        "triplet[all]": triplet,
        "triplet[semihard]": mined(triplet, miners.TripletMarginMiner(0.2, type_of_triplets="semihard", distance=sq)),
        "triplet[hard]": mined(triplet, miners.BatchHardMiner(distance=sq)),
        "npair_mc": pml.NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False)),
        "angular": pml.AngularLoss(alpha=40),
        "lifted": pml.LiftedStructureLoss(neg_margin=1, pos_margin=0),
        "multi_similarity": mined(pml.MultiSimilarityLoss(2, 50, 0.5), miners.MultiSimilarityMiner(0.1)),
        "nca": pml.NCALoss(distance=LpDistance(power=2, normalize_embeddings=False)),
        "histogram": pml.HistogramLoss(n_bins=100),
        "margin": pml.MarginLoss(margin=0.2, nu=0, beta=1.2, learn_beta=True),
    }


def _full_memory(n: int, size: int) -> CrossBatchMemory:
    """A memory of ``size`` rows written by earlier global batches of n/2 random classes x 2."""
    memory = CrossBatchMemory(size, DIM)
    step = 0
    while memory.num_filled < size:
        classes = torch.randperm(MEMORY_POOL_CLASSES)[: n // 2]
        memory.enqueue(torch.randn(n, DIM), classes.repeat_interleave(2), step)
        step += 1
    return memory


def run_memory_bench(sizes: list[int], memory_sizes: list[int], repeats: int = 7) -> list[dict[str, Any]]:
    """Time L_batch + L_memory of each loss that takes memory against its B x (N + M) x D floor."""
    rows: list[dict[str, Any]] = []
    for n, m in ((n, m) for n in sizes for m in memory_sizes if m >= n):
        emb = torch.randn(n, DIM)
        labels = torch.randperm(MEMORY_POOL_CLASSES)[: n // 2].repeat_interleave(2)
        memory = _full_memory(n, m)
        older_KD = memory.newest(m - n)[0]

        def floor(e: torch.Tensor, _: torch.Tensor, older_KD: torch.Tensor = older_KD) -> torch.Tensor:
            return (e @ e.T).sum() + (e @ torch.cat([e.detach(), older_KD]).T).sum()

        for name, registry_name, params in VARIANTS:
            loss = build_loss(registry_name, **params)
            if not loss.takes_memory:
                continue
            fns = {
                "floor": _fwd_bwd(floor, emb, labels),
                "ours": _fwd_bwd(LossWithMemory(loss, memory, 0), emb, labels),
            }
            times = interleaved_times(fns, repeats)
            rows.append(
                {
                    "loss": name,
                    "n": n,
                    "memory": m,
                    "memory_bytes": memory.nbytes,
                    "floor_ms": statistics.median(times["floor"]) * 1e3,
                    "ours_ms": statistics.median(times["ours"]) * 1e3,
                    "ours_over_floor": median_ratio(times, "ours", "floor"),
                }
            )
    print(f"{'loss + memory':<20}{'N':>6}{'M':>7}{'MB':>7}{'floor ms':>10}{'ours ms':>10}{'ours/floor':>12}")
    for r in rows:
        print(
            f"{r['loss']:<20}{r['n']:>6}{r['memory']:>7}{r['memory_bytes'] / 1e6:>7.1f}"
            f"{r['floor_ms']:>10.2f}{r['ours_ms']:>10.2f}{r['ours_over_floor']:>12.2f}"
        )
    return rows


def run_loss_bench(sizes: list[int], repeats: int = 7, memory_sizes: list[int] | None = None) -> dict[str, Any]:
    """Time every registered loss against the floor and pytorch-metric-learning; print a table.
    With ``memory_sizes``, also the losses with a cross-batch memory of each size M >= N."""
    torch.manual_seed(0)
    references = _reference_losses()
    rows: list[dict[str, Any]] = []
    for n in sizes:
        emb = torch.randn(n, DIM)
        labels = torch.arange(n // 2).repeat_interleave(2)
        for name, registry_name, params in VARIANTS:
            fns = {
                "floor": _fwd_bwd(_floor, emb, labels),
                "ours": _fwd_bwd(build_loss(registry_name, **params), emb, labels),
            }
            if name in references:
                fns["pml"] = _fwd_bwd(references[name], emb, labels)
            times = interleaved_times(fns, repeats)
            row: dict[str, Any] = {
                "loss": name,
                "n": n,
                "floor_ms": statistics.median(times["floor"]) * 1e3,
                "ours_ms": statistics.median(times["ours"]) * 1e3,
                "ours_over_floor": median_ratio(times, "ours", "floor"),
            }
            if "pml" in times:
                row.update(
                    pml_ms=statistics.median(times["pml"]) * 1e3, ours_over_pml=median_ratio(times, "ours", "pml")
                )
            rows.append(row)
    print(f"{'loss':<20}{'N':>6}{'floor ms':>10}{'ours ms':>10}{'pml ms':>10}{'ours/floor':>12}{'ours/pml':>10}")
    for r in rows:
        pml_ms = f"{r['pml_ms']:.2f}" if "pml_ms" in r else "-"
        ratio = f"{r['ours_over_pml']:.2f}" if "ours_over_pml" in r else "-"
        print(
            f"{r['loss']:<20}{r['n']:>6}{r['floor_ms']:>10.2f}{r['ours_ms']:>10.2f}{pml_ms:>10}{r['ours_over_floor']:>12.2f}{ratio:>10}"
        )
    report = {"suite": "losses", "dim": DIM, "threads": torch.get_num_threads(), "repeats": repeats, "rows": rows}
    if memory_sizes:
        report["memory_rows"] = run_memory_bench(sizes, memory_sizes, repeats)
    return report
