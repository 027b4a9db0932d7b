"""The quickstart, scaled down, through the real CLI: Ray Train, 2 gloo workers, DeepSpeed,
the mining actor, WebDataset shards, Prometheus endpoints and faiss evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from dml_dist.cli import main
from dml_dist.config import DataConfig


def test_training_clearly_beats_the_untrained_network(trained_run: Path) -> None:
    result = json.loads((trained_run / "eval.json").read_text())
    assert result["step"] == 60
    assert result["num_classes"] == 100
    assert [h["step"] for h in result["history"]] == [0, 30, 60]
    untrained, trained = result["untrained_recall"]["1"], result["recall"]["1"]
    assert trained >= 1.5 * untrained, (untrained, trained)


def test_run_directory_holds_config_metrics_and_checkpoints(trained_run: Path) -> None:
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["train"]["steps"] == 60 and config["batch"]["num_classes"] == 128
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(5, 61, 5))
    assert all(r["samples_per_second"] > 0 and r["step_seconds"] > 0 and np.isfinite(r["loss"]) for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    # Random batches (counted as fallbacks) only while the bank warms up, or if the service is slow.
    assert sum(r["mined"] for r in rows) >= len(rows) // 2, "the mining service chose too few batches"
    tags = sorted(p.name for p in (trained_run / "checkpoints").iterdir() if p.is_dir())
    assert tags == ["step-000030", "step-000060"]
    assert (trained_run / "embedder.pt").is_file()
    assert (trained_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (trained_run / "gallery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # held-out top-k, at the end
    metrics = json.loads((trained_run / "eval.json").read_text())["metrics"]
    assert 0.0 < metrics["map_at_r"] <= metrics["r_precision"] <= 1.0 and 0.0 < metrics["nmi"] <= 1.0


def test_eval_and_embed_commands_read_the_run(trained_run: Path, small_data: DataConfig, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    assert main(["eval", str(trained_run), "--json", str(out)]) == 0
    recall = json.loads(out.read_text())["recall"]["1"]
    assert recall == pytest.approx(json.loads((trained_run / "eval.json").read_text())["recall"]["1"], abs=1e-6)

    images = tmp_path / "images"
    images.mkdir()
    from dml_dist.data.datasets import procedural_root
    from dml_dist.data.shard_index import IndexedShards

    shards = IndexedShards(procedural_root(small_data.procedural, Path(small_data.cache_dir)) / "test")
    for i in range(5):
        (images / f"img{i}.png").write_bytes(shards.read(i, 0))
    assert main(["embed", str(trained_run), "--images", str(images), "--out", str(tmp_path / "emb.npy")]) == 0
    emb = np.load(tmp_path / "emb.npy")
    assert emb.shape == (5, 128) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert json.loads((tmp_path / "emb.json").read_text())[0].endswith("img0.png")
