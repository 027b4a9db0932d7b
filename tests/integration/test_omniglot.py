"""Real images end to end: Omniglot -> ``dml-dist shards`` -> ``dml-dist train`` on Ray.

Train on 3 alphabets, evaluate retrieval on the classes of the other 2 (never seen in training).
The run takes its loss from a YAML file (multi-similarity with its hyperparameters, not the
quickstart's N-pair), as a user writes it.
Skips when the Omniglot zip is absent (``$DML_DIST_OMNIGLOT``, else
``../shared/data/omniglot/images_background_small1.zip``: ``tests/conftest.py``).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from dml_dist.cli import main
from dml_dist.data.shard_index import IndexedShards
from dml_dist.data.shard_layout import read_manifest
from tests.conftest import OMNIGLOT_ZIP, REPO

TRAIN_ALPHABETS = ("Balinese", "Early_Aramaic", "Greek")
EVAL_ALPHABETS = ("Korean", "Latin")

pytestmark = pytest.mark.skipif(
    not OMNIGLOT_ZIP.is_file(), reason=f"Omniglot images not found at {OMNIGLOT_ZIP} (see its README.md)"
)


def test_convert_omniglot_and_train_through_the_cli(ray_session, tmp_path: Path) -> None:
    with zipfile.ZipFile(OMNIGLOT_ZIP) as archive:
        archive.extractall(tmp_path / "unzipped")
    root = tmp_path / "unzipped" / "images_background_small1"
    for split, alphabets in (("train_src", TRAIN_ALPHABETS), ("eval_src", EVAL_ALPHABETS)):
        for alphabet in alphabets:
            shutil.move(str(root / alphabet), str(tmp_path / split / alphabet))

    for split in ("train", "eval"):
        src, out = tmp_path / f"{split}_src", tmp_path / f"{split}_shards"
        assert main(["shards", str(src), str(out), "--holdout", "0", "--samples-per-shard", "500"]) == 0
        manifest = read_manifest(out)
        assert manifest["num_samples"] == 20 * manifest["num_classes"]  # 20 drawings per character
    num_train_classes = IndexedShards(tmp_path / "train_shards").num_classes
    assert num_train_classes >= 32

    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    config["loss"] = {"name": "multi_similarity", "alpha": 2, "beta": 50, "base": 0.5}
    config["batch"].update(num_classes=16, images_per_class=4)
    config_path = tmp_path / "omniglot_ms.yaml"
    config_path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    status = main(
        [
            "train",
            str(config_path),
            "--run-dir",
            str(run_dir),
            "--workers",
            "2",
            "--steps",
            "15",
            "--data",
            str(tmp_path / "train_shards"),
            "--eval-data",
            str(tmp_path / "eval_shards"),
            "--set",
            "data.image_size=28",
            "--set",
            "train.log_every=5",
            "--set",
            "train.eval_every=0",
            "--set",
            "mining.warmup_coverage=0.5",
        ]
    )
    assert status == 0
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())["loss"]
    assert recorded["name"] == "multi_similarity" and recorded["beta"] == 50, recorded
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["step"] == 15 and result["num_queries"] == 20 * result["num_classes"]
    assert result["num_classes"] == read_manifest(tmp_path / "eval_shards")["num_classes"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15]
    assert all(np.isfinite(r["loss"]) and r["samples_per_second"] > 0 for r in rows)
