"""Shared fixtures: a small procedural data set and one Ray instance for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dml_dist.config.schema import DataConfig, ProceduralDataConfig

REPO = Path(__file__).resolve().parents[1]
OMNIGLOT_ZIP = REPO.parent / "shared" / "data" / "omniglot" / "images_background_small1.zip"


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> DataConfig:
    """600 procedural classes (500 train, 100 held out) x 8 images, written once per session."""
    from dml_dist.data.datasets import resolve_data

    config = DataConfig(
        cache_dir=str(tmp_path_factory.mktemp("data-cache")),
        samples_per_shard=1000,
        procedural=ProceduralDataConfig(num_classes=600, num_test_classes=100, images_per_class=8, image_size=32),
    )
    resolve_data(config)
    return config


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance shared by every test that needs Ray."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    ray.init(num_cpus=4, dashboard_host="127.0.0.1", log_to_driver=True)
    yield ray
    ray.shutdown()
