"""Class names from ``dml-dist shards`` reach what a reader sees: the gallery's captions and the
rows of ``dml-dist embed`` (issue 26 item 6). Real shards from an image folder, a real model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from dml_dist import run_files
from dml_dist.cli import main
from dml_dist.config.loader import config_to_dict, load_config, save_config
from dml_dist.eval.api import load_embedder
from dml_dist.eval.embed import embed_shards_keyed
from dml_dist.eval.gallery import write_gallery
from dml_dist.models.embedder import build_model

CLASSES = ["Greek/alpha", "Greek/beta", "Latin/character03"]


@pytest.fixture(scope="module")
def named_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a run directory with an untrained model, a shard set written from nested class folders)."""
    root = tmp_path_factory.mktemp("names")
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / "src" / name).mkdir(parents=True)
        for i in range(3):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(buffer, format="PNG")
            (root / "src" / name / f"{i}.png").write_bytes(buffer.getvalue())
    assert main(["shards", str(root / "src"), str(root / "shards"), "--holdout", "0"]) == 0
    config = load_config(None, ["eval.gallery_queries=3", "eval.gallery_top_k=2"])
    save_config(config, root / run_files.CONFIG)
    torch.manual_seed(0)
    run_files.save_embedder(root / run_files.EMBEDDER, build_model(config.model), config_to_dict(config), step=1)
    return root, root / "shards"


def test_embed_rows_name_each_class(named_shards: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, shards = named_shards
    assert main(["embed", str(run_dir), "--images", str(shards), "--out", str(tmp_path / "e.npy")]) == 0
    rows = json.loads((tmp_path / "e.json").read_text())
    assert [(row["label"], row["class"]) for row in rows[::3]] == list(enumerate(CLASSES))


def test_gallery_captions_name_the_classes(named_shards: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, shards = named_shards
    embedder = load_embedder(run_dir)
    emb, labels, keys = embed_shards_keyed(embedder.model, shards, 32, 16, embedder.device)
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # captions stay text in the SVG
        svg = write_gallery(tmp_path / "gallery.svg", emb, labels, keys, shards, num_queries=3, k=2).read_text()
    assert all(f"query\n{name}" in svg or f">{name}<" in svg for name in CLASSES), svg[:2000]
    assert "class 0" not in svg
