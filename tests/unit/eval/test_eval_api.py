"""The embedder API, ``dml-dist eval`` / ``embed`` on a run directory, the gallery, the backbones
and the shipped configs (no Ray: the run directory is written by hand)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dml_dist import run_files
from dml_dist.cli import main
from dml_dist.config import ModelConfig
from dml_dist.config.loader import config_to_dict, load_config, save_config
from dml_dist.data.datasets import ensure_procedural
from dml_dist.data.formats import write_dataset
from dml_dist.eval.api import load_embedder
from dml_dist.models.embedder import build_model
from tests.conftest import REPO


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with an untrained small_cnn, and procedural shards in ``data/``."""
    root = tmp_path_factory.mktemp("run")
    config = load_config(
        None,
        [
            "data.procedural.num_classes=30",
            "data.procedural.num_test_classes=12",
            "data.procedural.images_per_class=4",
            "data.procedural.image_size=20",
            "batch.num_classes=8",
            f"data.cache_dir={root / 'data'}",
            "eval.gallery_queries=4",
            "eval.gallery_top_k=3",
        ],
    )
    ensure_procedural(config.data.procedural, root / "data", 100)
    save_config(config, root / run_files.CONFIG)
    torch.manual_seed(0)
    run_files.save_embedder(root / run_files.EMBEDDER, build_model(config.model), config_to_dict(config), step=7)
    return root


def _test_shards(run_dir: Path) -> Path:
    return next((run_dir / "data").glob("procedural-*")) / "test"


def _png(value: int, size: int = 20) -> bytes:
    buf = io.BytesIO()
    pixels = (np.arange(size * size).reshape(size, size) * value % 256).astype(np.uint8)
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_embedder_maps_bytes_and_tensors_to_unit_rows(run_dir: Path) -> None:
    embedder = load_embedder(run_dir)
    assert embedder.step == 7 and embedder.embedding_dim == 128
    images = [_png(v) for v in (3, 5, 7)]
    emb = embedder.embed(images)
    assert emb.shape == (3, 128) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    from dml_dist.data.images import decode_batch

    assert np.allclose(embedder.embed(decode_batch(images, 20)), emb, atol=1e-5)
    with pytest.raises(ValueError, match="expected a tensor"):
        embedder.embed(torch.zeros(2, 3, 20, 20))


def test_eval_command_writes_every_metric_and_a_gallery(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    assert main(["eval", str(run_dir), "--data", str(_test_shards(run_dir)), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["recall"]) == {"1", "2", "4", "8"}
    assert report["num_queries"] == 48 and report["num_classes"] == 12
    for name in ("map_at_r", "r_precision", "precision_at_1", "nmi"):
        assert 0.0 <= report[name] <= 1.0
    assert (run_dir / "gallery.png").stat().st_size > 1000
    assert (
        main(["eval", str(run_dir), "--data", str(_test_shards(run_dir)), "--protocol", "cub200", "--json", str(out)])
        == 0
    )
    assert set(json.loads(out.read_text())["recall"]) == {"1", "2", "4", "8", "16", "32"}


def test_embed_command_takes_a_folder_or_shards(run_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs" / "sub"
    folder.mkdir(parents=True)
    for v in (1, 2):
        (folder / f"{v}.png").write_bytes(_png(v))
    assert main(["embed", str(run_dir), "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "a.npy")]) == 0
    assert np.load(tmp_path / "a.npy").shape == (2, 128)
    assert json.loads((tmp_path / "a.json").read_text())[0].endswith("1.png")
    assert main(["embed", str(run_dir), "--images", str(_test_shards(run_dir)), "--out", str(tmp_path / "b.npy")]) == 0
    rows = json.loads((tmp_path / "b.json").read_text())
    assert np.load(tmp_path / "b.npy").shape == (48, 128) and {"key", "label"} <= set(rows[0])


def test_inshop_shards_are_evaluated_query_against_gallery(run_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "inshop"
    lines = []
    for item in range(6):
        for i in range(4):
            rel = f"img/id_{item:08d}/{i}.png"
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(_png(item * 4 + i + 1))
            status = "train" if item < 2 else ("query" if i == 0 else "gallery")
            lines.append(f"{rel} id_{item:08d} {status}")
    (src / "list_eval_partition.txt").write_text(
        f"{len(lines)}\nimage_name item_id evaluation_status\n" + "\n".join(lines)
    )
    write_dataset("inshop", src, tmp_path / "shards", 100)
    out = tmp_path / "eval.json"
    args = ["eval", str(run_dir), "--data", str(tmp_path / "shards" / "test"), "--protocol", "inshop"]
    assert main([*args, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["extra"]["protocol"] == "query/gallery"
    assert report["num_queries"] == 4 and report["num_gallery"] == 12
    assert report["recall"]["10"] == 1.0  # every query's 3 relevant items are among 12


def test_frozen_batch_norm_makes_embeddings_independent_of_the_batch() -> None:
    config = ModelConfig(backbone="timm/resnet10t", embedding_dim=16, in_channels=3, batch_norm="frozen")
    model = build_model(config).train()
    images = torch.randn(4, 3, 48, 48)
    assert torch.allclose(model(images)[:1], model(images[:1]), atol=1e-5)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    config = load_config(path)
    from dml_dist.losses import build_loss

    build_loss(config.loss.name, **config.loss.params)
    assert config.eval.ks()
