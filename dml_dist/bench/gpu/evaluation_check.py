"""The evaluation section of ``bench gpu``: faiss's Recall@1 (``eval/retrieval.py``, on the GPU
with a faiss-gpu build) against the exact result computed with torch, and both times.

Embeddings: C class centres in D dimensions, each with ``per_class`` rows = centre + Gaussian
noise (std ``NOISE`` per coordinate, the centres' own), so Recall@1 sits well inside (0, 1).
Leave-one-out Recall@1: a row's nearest other row (cosine) has its class. The torch side takes
the L2-normalized rows in blocks of queries, one fp32 [block, N] similarity matrix each, its
own column masked, and the arg-max. Both are exact searches, so they agree up to queries whose
two best candidates tie within float rounding: the check allows 1e-3.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from dml_dist.bench.gpu.engine import synchronize

AGREEMENT = 1e-3
NOISE = 1.5
QUERY_BLOCK = 4096


def clustered_embeddings(
    num_rows: int, per_class: int, dim: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings [N, D] and labels [N] of the module docstring (seeded)."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(num_rows // per_class, dim, generator=generator)
    labels = torch.arange(num_rows // per_class).repeat_interleave(per_class)
    emb = centres[labels] + NOISE * torch.randn(labels.numel(), dim, generator=generator)
    return emb.to(device), labels.to(device)


def exact_recall_at_1(emb_ND: torch.Tensor, labels_N: torch.Tensor) -> float:
    """Leave-one-out Recall@1 by cosine similarity, exhaustively (module docstring)."""
    unit = F.normalize(emb_ND.float(), dim=1)
    hits = 0
    for start in range(0, unit.shape[0], QUERY_BLOCK):
        rows = torch.arange(start, min(start + QUERY_BLOCK, unit.shape[0]), device=unit.device)
        sim_BN = unit[rows] @ unit.T
        sim_BN[torch.arange(rows.numel(), device=unit.device), rows] = float("-inf")
        hits += int((labels_N[sim_BN.argmax(dim=1)] == labels_N[rows]).sum())
    return hits / unit.shape[0]


def run_evaluation_check(num_rows: int, per_class: int, dim: int, device: torch.device) -> dict[str, Any]:
    """The section's figures; skipped (with the torch figures) when faiss does not import."""
    emb, labels = clustered_embeddings(num_rows, per_class, dim, device)
    started = time.perf_counter()
    exact = exact_recall_at_1(emb, labels)
    synchronize(device)
    section: dict[str, Any] = {
        "num_embeddings": num_rows,
        "dim": dim,
        "num_classes": num_rows // per_class,
        "torch_device": str(device),
        "torch_recall_at_1": exact,
        "torch_seconds": time.perf_counter() - started,
    }
    try:
        import faiss
    except ImportError as error:
        return {**section, "status": "skipped", "reason": f"faiss does not import: {error}"}
    from dml_dist.eval.retrieval import retrieval_metrics

    emb_np, labels_np = emb.cpu().numpy(), labels.cpu().numpy()
    on_gpu = faiss.get_num_gpus() > 0
    started = time.perf_counter()
    report = retrieval_metrics(emb_np, labels_np, [1], use_gpu=on_gpu)
    section.update(
        faiss_build="gpu" if on_gpu else "cpu",
        faiss_recall_at_1=report.recall[1],
        faiss_seconds=time.perf_counter() - started,
        difference=abs(report.recall[1] - exact),
        tolerance=AGREEMENT,
    )
    section["status"] = "ok" if section["difference"] <= AGREEMENT else "failed"
    return section
