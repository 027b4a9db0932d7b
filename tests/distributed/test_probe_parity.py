"""The probe batch (``train/probe.py``): a pure function of the seed, its rate the violation rate
of its own images by the paper-style loop, and the same on 3 gloo ranks as on one process
(10 images over 3 ranks: the padding must not count)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dml_dist.config import DataConfig
from dml_dist.config.schema import ExperimentConfig
from dml_dist.data.bad_data import BadDataLog
from dml_dist.data.datasets import resolve_data
from dml_dist.data.images import decode_image
from dml_dist.data.shard_index import IndexedShards
from dml_dist.distributed import collectives
from dml_dist.models.embedder import build_model
from dml_dist.train.probe import probe_pairs, probe_violation_rate


def _setup(data: DataConfig) -> tuple[ExperimentConfig, SimpleNamespace, torch.nn.Module]:
    config = ExperimentConfig(data=data)
    shards = IndexedShards(resolve_data(data).train)
    order = list(range(shards.num_classes))[::-1]  # bank positions differ from shard positions
    loader = SimpleNamespace(
        shards=shards, classes=order, class_sizes=[shards.class_sizes()[c] for c in order], bad=BadDataLog()
    )
    torch.manual_seed(0)
    return config, loader, build_model(config.model).train()


def _loop_violation_rate(emb: np.ndarray, labels: np.ndarray) -> float:
    """Share of anchors whose most similar other-class image beats their least similar same-class image."""
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    violated, counted = 0, 0
    for i in range(len(emb)):
        pos = [float(emb[i] @ emb[j]) for j in range(len(emb)) if j != i and labels[j] == labels[i]]
        neg = [float(emb[i] @ emb[j]) for j in range(len(emb)) if labels[j] != labels[i]]
        if pos and neg:
            counted += 1
            violated += max(neg) > min(pos)
    return violated / counted


def test_the_probe_is_a_pure_function_of_the_seed() -> None:
    sizes = [3, 1, 5, 2, 4, 6, 2, 2]
    first = probe_pairs(4, sizes, num_classes=5, images_per_class=2)
    assert first == probe_pairs(4, sizes, num_classes=5, images_per_class=2) != probe_pairs(5, sizes, 5, 2)
    classes = [c for c, _ in first]
    assert len(set(classes)) == 5 and all(0 <= s < sizes[c] for c, s in first)
    assert all(classes.count(c) == min(2, sizes[c]) for c in set(classes)) and len(set(first)) == len(first)


def test_the_probe_rate_is_the_violation_rate_of_its_images(small_data: DataConfig) -> None:
    config, loader, model = _setup(small_data)
    pairs = probe_pairs(0, loader.class_sizes, num_classes=6, images_per_class=2)
    rate = probe_violation_rate(model, loader, pairs, config, torch.device("cpu"), torch.float32)
    images = [loader.shards.read(loader.classes[p], s) for p, s in pairs]
    batch = torch.from_numpy(np.stack([decode_image(b, config.data.decode_size, config.data.channels) for b in images]))
    with torch.no_grad():
        emb = model.eval()(batch).numpy()
    labels = np.array([loader.classes[p] for p, _ in pairs])
    assert rate == _loop_violation_rate(emb, labels) and 0.0 <= rate <= 1.0
    model.train()
    probe_violation_rate(model, loader, pairs, config, torch.device("cpu"), torch.float32)
    assert model.training


def _rank_main(rank: int, world: int, port: int, data: DataConfig, out: str) -> None:
    collectives.init_local_gloo(rank, world, port)
    try:
        config, loader, model = _setup(data)
        pairs = probe_pairs(0, loader.class_sizes, num_classes=5, images_per_class=2)
        rate = probe_violation_rate(model, loader, pairs, config, torch.device("cpu"), torch.float32)
        assert (rate is None) == (rank != 0)
        if rank == 0:
            Path(out).write_text(repr(rate))
    finally:
        dist.destroy_process_group()


def test_three_ranks_give_the_one_process_rate(small_data: DataConfig, tmp_path: Path) -> None:
    out = tmp_path / "rate.txt"
    mp.spawn(_rank_main, args=(3, collectives.free_local_port(), small_data, str(out)), nprocs=3, join=True)
    config, loader, model = _setup(small_data)
    pairs = probe_pairs(0, loader.class_sizes, num_classes=5, images_per_class=2)
    assert len(pairs) % 3 != 0  # the shares are padded
    alone = probe_violation_rate(model, loader, pairs, config, torch.device("cpu"), torch.float32)
    assert float(out.read_text()) == alone
