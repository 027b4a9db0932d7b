"""Storage errors are not bad data (issue 25, item 6), on real shard files.

A shard that cannot be read (removed under a running loader: the open fails with ENOENT, as
for EIO or a permission error) is retried and then fails the load, so the step fails and Ray
Train restarts the worker, in both loaders. Corrupt image bytes inside an intact tar are bad
data: skipped and counted, in training (a class whose every image is corrupt is not trained as
blank images under its label), in the held-out evaluation and in the mining refresh.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dml_dist.config import DataConfig, EvalConfig
from dml_dist.config.loader import load_config
from dml_dist.data import bad_data
from dml_dist.data.bad_data import StorageError
from dml_dist.data.decode_spec import DecodeSpec
from dml_dist.data.formats import write_dataset
from dml_dist.data.indexed_loader import ClassBatchLoader
from dml_dist.data.shard_index import IndexedShards
from dml_dist.data.stream_loader import StreamingClassLoader
from dml_dist.eval.heldout import evaluate_shards
from dml_dist.models.embedder import build_model
from dml_dist.train.refresh import refresh_stale_classes


@pytest.fixture(autouse=True)
def short_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry pauses of 0.05 s, 0.1 s instead of 0.5 s, 1 s (the number of tries is unchanged)."""
    monkeypatch.setattr(bad_data, "IO_PAUSE_S", 0.05)


@pytest.fixture
def shard_dir(tmp_path: Path) -> Path:
    """6 classes x 3 PNG images, 6 samples (two classes) per shard: 3 shards, with a class index."""
    for c in range(6):
        folder = tmp_path / "src" / f"char{c:02d}"
        folder.mkdir(parents=True)
        for i in range(3):
            pixels = np.random.default_rng(10 * c + i).integers(0, 255, (12, 12), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{i:02d}.png")
    write_dataset("folder", tmp_path / "src", tmp_path / "shards", samples_per_shard=6, holdout=0.0)
    return tmp_path / "shards"


def corrupt(shard_dir: Path, class_pos: int, samples: list[int]) -> list[str]:
    """Overwrite the image bytes of ``samples`` of a class in place (the tar stays intact); their keys."""
    shards = IndexedShards(shard_dir)
    keys = []
    for sample in samples:
        shard_pos, offset, size, key = shards.entries[class_pos][sample]
        with open(shard_dir / shards.shards[shard_pos], "r+b") as handle:
            handle.seek(offset)
            handle.write(b"\x89PNG not an image".ljust(size, b"\0"))
        keys.append(key)
    return keys


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_shard_removed_under_the_indexed_loader_fails_the_load(shard_dir: Path, num_workers: int) -> None:
    shards = IndexedShards(shard_dir)  # every shard exists at start
    loader = ClassBatchLoader(
        shards, DecodeSpec(12), seed=0, images_per_class=3, world_size=1, rank=0, num_workers=num_workers
    )
    (shard_dir / shards.shards[1]).unlink()  # holds classes 2 and 3
    with pytest.raises(StorageError, match=rf"cannot read {shards.shards[1]} .* after 3 tries"):
        loader.load(0, [2, 0])
    assert loader.skipped_samples == 0  # not counted as bad data


def test_a_shard_removed_under_the_streaming_loader_fails_the_load(shard_dir: Path) -> None:
    loader = StreamingClassLoader(shard_dir, DecodeSpec(12), seed=0, images_per_class=3, world_size=1, rank=0)
    (shard_dir / "shard-000000.tar").unlink()
    with pytest.raises(StorageError, match=r"cannot read shard .*shard-000000.tar \(No such file or directory\)"):
        loader.load(0, [0, 1])
    assert loader.skipped_samples == 0


def test_a_read_that_fails_once_is_retried_and_succeeds(shard_dir: Path) -> None:
    shards = IndexedShards(shard_dir)
    loader = ClassBatchLoader(shards, DecodeSpec(12), seed=0, images_per_class=3, world_size=1, rank=0)
    expected = loader.load(0, [0, 1])
    path = shard_dir / shards.shards[0]
    away = path.with_name("away.tar")
    path.rename(away)
    loader.dataset.shards._handles.clear()  # a fresh worker process: the next read opens the file
    back = threading.Timer(0.02, away.rename, args=(path,))  # the file comes back before the second try
    back.start()
    images, labels = loader.load(0, [0, 1])
    back.join()
    assert torch.equal(images, expected[0]) and torch.equal(labels, expected[1])


def test_corrupt_images_are_skipped_and_a_class_without_any_is_not_trained_blank(shard_dir: Path) -> None:
    corrupt(shard_dir, 1, [0])  # one bad image of class 1: replaced by another of class 1
    corrupt(shard_dir, 2, [0, 1, 2])  # every image of class 2
    loader = ClassBatchLoader(
        IndexedShards(shard_dir), DecodeSpec(12), seed=0, images_per_class=3, world_size=1, rank=0
    )
    images, labels = loader.load(0, [1, 2])
    assert labels[:3].tolist() == [1, 1, 1]
    assert 2 not in labels.tolist()  # class 2's rows take the next class's images and label
    assert labels[3:].tolist() == [3, 3, 3]
    assert all(image.abs().sum() > 0 for image in images)  # no blank stands in
    assert loader.skipped_samples >= 1 + 3


def test_corrupt_images_in_a_stream_never_fill_a_class(shard_dir: Path) -> None:
    corrupt(shard_dir, 0, [0, 1, 2])
    loader = StreamingClassLoader(shard_dir, DecodeSpec(12), seed=0, images_per_class=3, world_size=1, rank=0)
    _, labels = loader.load(0, list(range(5)))
    assert sorted(set(labels.tolist())) == [1, 2, 3, 4, 5]
    assert loader.skipped_samples == 3


def _small_model() -> torch.nn.Module:
    config = load_config(None, ["model.channels=[8]", "model.embedding_dim=16"])
    return build_model(config.model)


def test_a_corrupt_image_in_the_eval_set_is_skipped_and_counted(shard_dir: Path) -> None:
    (bad_key,) = corrupt(shard_dir, 4, [1])
    data = DataConfig(image_size=12)
    held = evaluate_shards(_small_model(), shard_dir, data, EvalConfig(), torch.device("cpu"))
    assert held.report.extra["skipped_samples"] == 1
    assert len(held.keys) == 17 and bad_key not in held.keys


class _Published:
    """A class source that keeps what the refresh publishes (the mining service's side is not under test)."""

    def __init__(self) -> None:
        self.classes: list[int] = []

    def publish(self, step: int, classes: np.ndarray, emb: np.ndarray) -> None:
        self.classes = classes.tolist()


def test_a_corrupt_image_in_the_mining_refresh_is_skipped_and_counted(shard_dir: Path) -> None:
    corrupt(shard_dir, 3, [0])
    config = load_config(None, ["data.image_size=12", "mining.refresh_images_per_class=3", "model.embedding_dim=16"])
    loader = ClassBatchLoader(
        IndexedShards(shard_dir), DecodeSpec(12), seed=0, images_per_class=3, world_size=1, rank=0
    )
    published = _Published()
    refreshed = refresh_stale_classes(
        _small_model(),
        loader,
        published,
        5,
        [3, 4],
        config,
        torch.device("cpu"),
        torch.float32,  # type: ignore[arg-type]
    )
    assert refreshed == 2 and loader.skipped_samples == 1
    assert sorted(published.classes) == [3, 3, 4, 4, 4]  # class 3 from its two good images
