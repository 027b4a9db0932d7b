"""The driver's count of training classes, read from the class index, is the loaders' count."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dml_dist.config import load_config
from dml_dist.data.loader import build_loader
from dml_dist.data.shard_writer import Sample, write_shards
from dml_dist.train.launcher import _usable_classes


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (12, 12), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def uneven_shards(tmp_path: Path) -> Path:
    """4 classes with 3, 1, 3 and 2 images."""
    samples = [
        Sample(label=c, key=f"c{c}_{i}", read=lambda c=c, i=i: _png(10 * c + i), origin=f"{c}/{i}")
        for c, size in enumerate([3, 1, 3, 2])
        for i in range(size)
    ]
    directory, _ = write_shards(samples, tmp_path / "shards", samples_per_shard=4, source={"test": True})
    return directory


@pytest.mark.parametrize(("policy", "expected"), [("replace", 4), ("exclude", 2)])
def test_usable_classes_match_the_loader(uneven_shards: Path, policy: str, expected: int) -> None:
    config = load_config(None, ["batch.num_classes=2", "batch.images_per_class=3", f"data.min_images_policy={policy}"])
    loader = build_loader(config.data, str(uneven_shards), seed=0, images_per_class=3, world_size=1, rank=0)
    assert _usable_classes(config, uneven_shards) == loader.num_classes == expected


def test_no_usable_class_is_refused(uneven_shards: Path) -> None:
    config = load_config(None, ["batch.num_classes=2", "batch.images_per_class=4", "data.min_images_policy=exclude"])
    with pytest.raises(ValueError, match="data: no class of .* has K=4 images"):
        _usable_classes(config, uneven_shards)
