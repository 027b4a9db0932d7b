"""``dml-dist train --data 'file://...'``: a URL or brace pattern streams, end to end up to the loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from dml_dist.config import DataConfig, load_config
from dml_dist.config.loader import replaced
from dml_dist.data.datasets import procedural_root, resolve_data
from dml_dist.data.loader import build_loader
from dml_dist.train.launcher import _usable_classes
from tests.conftest import REPO


def test_a_url_pattern_streams_into_the_loader(small_data: DataConfig) -> None:
    root = procedural_root(small_data.procedural, Path(small_data.cache_dir))
    shards = sorted((root / "train").glob("shard-*.tar"))
    spec = f"file://{root / 'train'}/shard-{{000000..{len(shards) - 1:06d}}}.tar"  # read through pyarrow.fs
    config = load_config(
        REPO / "configs" / "quickstart.yaml",
        [f"data.train_shards={spec}", f"data.eval_shards={root / 'test'}", "data.mode=streaming",
         "mining.enabled=false", "batch.num_classes=16", f"data.cache_dir={small_data.cache_dir}"],
    )  # fmt: skip
    paths = resolve_data(config.data)
    assert paths.train == spec
    assert _usable_classes(config, paths.train) == 16
    loader = build_loader(
        config.data, str(paths.train), seed=0, images_per_class=2, world_size=2, rank=1, num_classes=16
    )
    images, labels = loader.load(0, list(range(16)))
    assert images.shape[0] == labels.shape[0] == 16 and len(set(labels.tolist())) == 8


def test_a_url_needs_streaming_mode(small_data: DataConfig) -> None:
    data = replaced(small_data, {"train_shards": "s3://bucket/x/shard-{000000..000001}.tar"})
    with pytest.raises(ValueError, match="data.train_shards: .* only data.mode=streaming reads"):
        resolve_data(data)
