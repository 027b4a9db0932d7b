"""Held-out evaluation of a model on a shard directory: embed, then every retrieval metric.

Shared by the training loop (rank 0, every ``eval_every`` steps) and ``dml-dist eval``. The
protocol follows the shards: when their manifest lists query and gallery keys (In-Shop, written
by ``dml-dist shards --format inshop``), queries search the gallery; otherwise leave-one-out,
plus cross-style Recall@1 when the manifest records each image's style (``eval/cross_style.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dml_dist.config import DataConfig, EvalConfig
from dml_dist.data.bad_data import BadDataLog
from dml_dist.data.shard_layout import read_manifest
from dml_dist.eval.cross_style import cross_style_recall_at_1, style_ids
from dml_dist.eval.embed import embed_shards_keyed
from dml_dist.eval.retrieval import RetrievalReport, retrieval_metrics


@dataclass
class HeldOut:
    """Embeddings of a held-out set and their metrics."""

    emb: np.ndarray
    labels: np.ndarray
    keys: list[str]
    report: RetrievalReport
    query_idx: np.ndarray
    gallery_idx: np.ndarray


def query_gallery_split(directory: str | Path, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(query rows, gallery rows): the manifest's roles when it has them, else every row in both."""
    roles = read_manifest(directory).get("source", {}).get("roles")
    everything = np.arange(len(keys))
    if not roles:
        return everything, everything
    query_keys, gallery_keys = set(roles.get("query", [])), set(roles.get("gallery", []))
    query = np.array([i for i, k in enumerate(keys) if k in query_keys], dtype=np.int64)
    gallery = np.array([i for i, k in enumerate(keys) if k in gallery_keys], dtype=np.int64)
    if query.size == 0 or gallery.size == 0:
        raise ValueError(f"eval: {directory}: the manifest's query/gallery roles match none of the samples")
    return query, gallery


def evaluate_shards(
    model: nn.Module,
    directory: str | Path,
    data: DataConfig,
    settings: EvalConfig,
    device: torch.device,
    seed: int = 0,
    progress: bool = False,
) -> HeldOut:
    """Embed every usable sample of ``directory`` and compute the metrics ``settings`` asks for
    (``progress``: a bar while embedding, for ``dml-dist eval``). Bad samples are skipped; their
    number is ``report.extra["skipped_samples"]``."""
    bad = BadDataLog()  # a bad image is skipped and counted, never fatal (data/bad_data.py)
    emb, labels, keys = embed_shards_keyed(
        model,
        directory,
        data.decode_size,
        settings.batch_size,
        device,
        data.channels,
        progress,
        bad,
        data.resize_filter,
    )
    if emb.shape[0] == 0:
        raise ValueError(f"eval: {directory} holds no readable samples")
    query, gallery = query_gallery_split(directory, keys)
    is_split = query.size != len(keys) or gallery.size != len(keys)
    report = retrieval_metrics(
        emb,
        labels,
        settings.ks(),
        query_idx=query if is_split else None,
        gallery_idx=gallery if is_split else None,
        block_size=settings.block_size,
        nmi=settings.nmi,
        seed=seed,
    )
    report.extra["protocol"] = "query/gallery" if is_split else "leave-one-out"
    report.extra["skipped_samples"] = bad.total
    styles = None if is_split else style_ids(directory, keys)
    if styles is not None:
        recall, queries = cross_style_recall_at_1(emb, labels, styles, settings.block_size)
        report.extra["cross_style_recall_1"] = recall
        report.extra["cross_style_queries"] = queries
    return HeldOut(emb, labels, keys, report, query, gallery)
