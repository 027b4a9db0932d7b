"""timm backbones trained from random initialization on the session's small glyph set: resnet10t
(BatchNorm over the global batch) through the real CLI on 2 Ray workers, then a second run that
starts from the first (``model.init_from``); a ViT at 32 px (2 x 2 patches of 16 px) in one
process, through the same loader, loss and faiss evaluation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dml_dist.cli import main
from dml_dist.config import DataConfig, EvalConfig, ModelConfig
from tests.conftest import set_args, small_data_settings

RESNET = {
    "model.backbone": "timm/resnet10t",
    "model.batch_norm": "global",
    "model.embedding_dim": 64,
    "data.image_size": 32,
    "batch.num_classes": 32,
    "mining.enabled": False,
    "train.eval_every": 0,
    "train.log_every": 10,
    "eval.nmi": False,
    "eval.gallery_queries": 0,
}


@pytest.fixture(scope="module")
def resnet_run(small_data: DataConfig, ray_session, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("timm") / "resnet10t"
    args = ["train", "quickstart", "--run-dir", str(run_dir), "--workers", "2", "--steps", "30"]
    assert main(args + set_args({**small_data_settings(small_data), **RESNET})) == 0
    return run_dir


def test_resnet10t_trained_on_two_workers_beats_the_untrained_network(resnet_run: Path) -> None:
    result = json.loads((resnet_run / "eval.json").read_text())
    assert result["step"] == 30
    assert result["recall"]["1"] > result["untrained_recall"]["1"], result
    import yaml

    data = yaml.safe_load((resnet_run / "config.yaml").read_text())["data"]
    assert data["interpolation"] == "bicubic" and len(data["mean"]) == 1  # timm's data config, for 1 channel


def test_init_from_a_finished_run_starts_from_its_embedder(
    resnet_run: Path, small_data: DataConfig, ray_session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dml_dist.eval.api import load_embedder
    from dml_dist.models.embedder import build_model

    finished = load_embedder(resnet_run, device="cpu")
    config = finished.config
    started = build_model(ModelConfig(**{**config.model.__dict__, "init_from": str(resnet_run)}), config.data).eval()
    images = torch.rand(6, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(started(images), finished.model(images), rtol=0, atol=0)
    # Through the CLI: the second run's step-0 evaluation is the first run's final one. The run is
    # named by a path relative to the user's directory, which the workers do not run in.
    second = tmp_path / "second"
    monkeypatch.chdir(tmp_path)
    settings = {**small_data_settings(small_data), **RESNET, "model.init_from": os.path.relpath(resnet_run, tmp_path)}
    args = ["train", "quickstart", "--run-dir", str(second), "--workers", "2", "--steps", "1"]
    assert main(args + set_args(settings)) == 0
    first_eval = json.loads((resnet_run / "eval.json").read_text())
    second_eval = json.loads((second / "eval.json").read_text())
    assert second_eval["untrained_recall"] == pytest.approx(first_eval["recall"], abs=1e-6)


def test_vit_tiny_at_32_px_trains_in_one_process(small_data: DataConfig) -> None:
    from dml_dist.data.datasets import procedural_root
    from dml_dist.data.loader import build_loader
    from dml_dist.data.sampler import random_classes
    from dml_dist.eval.heldout import evaluate_shards
    from dml_dist.losses import build_loss
    from dml_dist.models.embedder import build_model

    torch.manual_seed(0)
    root = procedural_root(small_data.procedural, Path(small_data.cache_dir))
    config = ModelConfig(backbone="timm/vit_tiny_patch16_224", backbone_args={"img_size": 32}, embedding_dim=64)
    model = build_model(config, small_data)
    loss_fn = build_loss("npair_mc", l2_reg=0.002, temperature=0.1)
    # lr 1e-4: at 1e-3 without warm-up this ViT's held-out Recall@1 falls (0.155 -> 0.078 in 100 steps).
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    settings = EvalConfig(recall_at=[1], nmi=False, batch_size=256)

    def recall_at_1() -> float:
        model.eval()
        held_out = evaluate_shards(model, root / "test", small_data, settings, torch.device("cpu"))
        model.train()
        return float(held_out.report.recall[1])

    before = recall_at_1()
    loader = build_loader(
        small_data, str(root / "train"), seed=0, images_per_class=2, world_size=1, rank=0, num_classes=32
    )
    for step in range(100):
        images, labels = loader.load(step, random_classes(0, step, loader.num_classes, 32))
        loss = loss_fn(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = recall_at_1()
    assert np.isfinite(loss.item())
    assert after > before, (before, after)
