"""Resuming from a URI storage with 4 ranks on one node (issue 25, item 4): every rank loads the
checkpoint rank 0 chose, from one copy per node.

A real Ray run of 4 workers writes its checkpoints to an S3 bucket (moto's standalone server: a
real HTTP S3 API) at steps 2 and 4, and is resumed. Before, every rank fetched "the latest good
checkpoint" itself into the same node-local directory (rmtree, then copy), so ranks could
delete each other's files and resume from different steps; ``resumes.jsonl`` now records the
step each rank read from its own loaded files, and the server's request log shows that the
node read the checkpoint's files once (one copy), not once per rank.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dml_dist import storage as locations
from dml_dist.cli import main
from dml_dist.config import DataConfig
from dml_dist.distributed.collectives import free_local_port
from tests.conftest import REPO, _wait_http, set_args, small_data_settings

# Ray's workers inherit the environment the session's Ray instance starts with (tests/conftest.py),
# so moto's credentials are set when this module is collected, before any Ray starts.
for _key, _value in {
    "AWS_ACCESS_KEY_ID": "dml-dist-test",
    "AWS_SECRET_ACCESS_KEY": "dml-dist-test",
    "AWS_EC2_METADATA_DISABLED": "true",
}.items():
    os.environ.setdefault(_key, _value)


@dataclass
class Bucket:
    storage: str  # the URI passed as --storage
    requests: Path  # the server's request log, one line per HTTP request

    def reads_of(self, prefix: str, since: int) -> int:
        """Requests that read (GET, HEAD) a ``.pt`` file under ``prefix``, from byte ``since`` of the
        log, once the log stops growing (the server writes a line after it answers)."""
        pattern = re.compile(rf"(GET|HEAD) /{re.escape(prefix)}/\S+\.pt HTTP")
        counts: list[int] = []
        while len(counts) < 2 or counts[-1] != counts[-2]:
            time.sleep(0.5)
            with self.requests.open() as log:
                log.seek(since)
                counts.append(sum(1 for line in log.read().splitlines() if pattern.search(line)))
        return counts[-1]


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bucket]:
    """A storage URI in a fresh bucket of a local S3-compatible server that logs every request."""
    binary = Path(sys.executable).parent / "moto_server"
    if not binary.is_file():
        raise RuntimeError("moto_server is missing: pip install 'moto[server]' (the test extra)")
    port = free_local_port()
    requests = tmp_path_factory.mktemp("s3") / "requests.log"
    with requests.open("w") as log:
        proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    try:
        _wait_http(f"http://127.0.0.1:{port}/", 30)
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/faults", method="PUT"), timeout=10)
        yield Bucket(f"s3://faults/storage?endpoint_override=127.0.0.1:{port}&scheme=http", requests)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _train(small_data: DataConfig, storage: str, steps: int, *extra: str) -> int:
    settings = {
        **small_data_settings(small_data),
        "batch.num_classes": 32,  # 8 classes x 2 images per rank
        "train.checkpoint_every": 2,
        "train.eval_every": 0,
        "train.log_every": 1,
        "metrics.enabled": False,
        "mining.enabled": False,
    }
    args = ["train", str(REPO / "configs" / "quickstart.yaml"), "--storage", storage, "--run-dir", "runs/four"]
    return main([*args, "--workers", "4", "--steps", str(steps), *extra, *set_args(settings)])


def test_four_ranks_resuming_from_a_uri_storage_load_the_same_checkpoint(
    small_data: DataConfig, ray_session, bucket: Bucket, tmp_path: Path
) -> None:
    assert _train(small_data, bucket.storage, 4) == 0
    run = locations.join(bucket.storage, "runs", "four")
    checkpoints = locations.list_dirs(locations.join(run, "checkpoints"))
    assert {"step-000002", "step-000004"} <= set(checkpoints), checkpoints  # a disagreement would show

    before = bucket.requests.stat().st_size
    assert _train(small_data, bucket.storage, 6, "--resume", "--allow-changes", "train.steps") == 0
    resumes = [json.loads(line) for line in locations.read_bytes(locations.join(run, "resumes.jsonl")).splitlines()]
    assert [r["resumed_from"] for r in resumes] == [4]
    assert resumes[0]["rank_steps"] == [4, 4, 4, 4]  # the step each rank read from the files it loaded
    rows = [json.loads(line) for line in locations.read_bytes(locations.join(run, "metrics.jsonl")).splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))

    # The node copied the checkpoint's files once, not once per rank: as many reads of them
    # during the resume as one copy made here.
    prefix = "faults/storage/runs/four/checkpoints/step-000004"
    during_resume = bucket.reads_of(prefix, before)
    before_copy = bucket.requests.stat().st_size
    locations.download_dir(locations.join(run, "checkpoints", "step-000004"), tmp_path / "one-copy")
    one_copy = bucket.reads_of(prefix, before_copy)
    assert one_copy > 0 and during_resume == one_copy, (during_resume, one_copy)


def test_a_shard_that_cannot_be_read_fails_the_training_step(
    small_data: DataConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real worker (``Trainer``, one gloo rank in this process, as the study harness runs it):
    a shard removed before the step reads it fails ``train_step`` (Ray Train would restart the
    worker group) instead of training on blank images."""
    from dml_dist.config.loader import load_config
    from dml_dist.data import bad_data
    from dml_dist.data.datasets import resolve_data
    from dml_dist.distributed import collectives
    from dml_dist.train.loop import Trainer
    from dml_dist.train.worker_parts import build_parts
    from dml_dist.train.worker_plan import WorkerPlan

    data = resolve_data(small_data)
    train = tmp_path / "train"
    shutil.copytree(data.train, train)  # the session's data set stays whole
    overrides = [f"{k}={v}" for k, v in small_data_settings(small_data).items()]
    config = load_config(
        str(REPO / "configs" / "quickstart.yaml"),
        [*overrides, "batch.num_classes=32", "metrics.enabled=false", "mining.enabled=false", "train.steps=2"],
    )
    plan = WorkerPlan(config, str(train), str(data.eval), str(tmp_path / "run"), "storage-fault")
    (tmp_path / "run").mkdir()
    collectives.init_local_gloo(0, 1, collectives.free_local_port())
    try:
        trainer = Trainer(plan, build_parts(plan, in_ray_train=False))
        for shard in train.glob("shard-*.tar"):
            shard.unlink()  # every class's shard: whichever classes step 1 draws, its reads fail
        monkeypatch.setattr(bad_data, "IO_PAUSE_S", 0.05)  # shorter pauses between the 3 tries
        with pytest.raises(bad_data.StorageError, match=r"cannot read shard-\d+\.tar .*No such file or directory"):
            trainer.train_step(0, should_log=False)
        assert trainer.loader.skipped_samples == 0  # nothing was counted as bad data
    finally:
        collectives.shutdown()
