"""Failures that must end or spare a run as documented (docs/reliability.md), with real Ray
workers, a real DeepSpeed ZeRO 1 engine and a real mining actor killed mid-run."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import pytest

from dml_dist.cli import main
from dml_dist.config import DataConfig
from tests.conftest import REPO, mining_actor_of, set_args, small_data_settings


def _train_args(small_data: DataConfig, run_dir: Path, steps: int, **overrides: object) -> list[str]:
    settings: dict[str, object] = {
        **small_data_settings(small_data),
        "batch.num_classes": 64,
        "train.eval_every": 0,
        "train.log_every": 1,
        "metrics.enabled": False,
        **overrides,
    }
    args = ["train", str(REPO / "configs" / "quickstart.yaml"), "--run-dir", str(run_dir), "--steps", str(steps)]
    return args + set_args(settings)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_nan_gradient_under_zero_1_stops_once_without_a_retry(
    small_data: DataConfig, ray_session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """lr = 1e6: step 1's update blows the weights up; from step 2 the loss stays finite (the
    cosine logits are bounded, the L2 term is large but finite) while the gradients are not.
    Under ZeRO 1 those gradients live in DeepSpeed's partitions, not in ``.grad``. The default
    ``train.max_failures`` (2) is kept: a stop must not be retried like a crash."""
    run_dir = tmp_path / "nan-gradient"
    overrides = {"engine.zero_stage": 1, "engine.lr": 1e6, "train.max_nonfinite_steps": 3, "mining.enabled": False}
    assert main(_train_args(small_data, run_dir, 20, **overrides)) == 1

    err = capsys.readouterr().err
    assert err.count("dml-dist: training stopped: non-finite loss or gradient: step 4 had loss") == 1, err[-3000:]
    rows = _rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # one attempt: no retry from step 0 or a checkpoint
    assert [r["skipped"] for r in rows] == [False, True, True, True]
    assert all(math.isfinite(r["loss"]) for r in rows), rows  # the gradients, not the loss, were caught
    assert not (run_dir / "resumes.jsonl").exists()
    assert (run_dir / "checkpoints" / "step-000004" / "complete.json").is_file()  # the last finite state


def _wait_for_step(run_dir: Path, step: int, deadline: float) -> int:
    while time.monotonic() < deadline:
        try:
            rows = _rows(run_dir)
        except (FileNotFoundError, json.JSONDecodeError):
            rows = []
        if rows and rows[-1]["step"] >= step:
            return int(rows[-1]["step"])
        time.sleep(0.1)
    raise TimeoutError(f"step {step} not reached")


def test_a_dead_mining_actor_at_checkpoints_leaves_training_running_to_the_end(
    small_data: DataConfig, ray_session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The mining actor is killed for good after step 1: every later checkpoint asks a dead
    service for its state. The saves are skipped and counted; the run ends normally."""
    run_dir = tmp_path / "mining-dead"
    killed: dict[str, int] = {}

    def kill_the_actor() -> None:
        step = _wait_for_step(run_dir, 1, time.monotonic() + 300)
        ray_session.kill(mining_actor_of(ray_session, run_dir), no_restart=True)
        killed["after_step"] = step

    killer = threading.Thread(target=kill_the_actor, daemon=True)
    killer.start()
    overrides = {
        "train.checkpoint_every": 4,
        "mining.enabled": True,
        "mining.warmup_steps": 1,
        "mining.ramp_steps": 1,
        "mining.timeout_s": 1.0,
    }
    assert main(_train_args(small_data, run_dir, 10, **overrides)) == 0
    killer.join(timeout=5)
    assert killed["after_step"] < 8, killed  # checkpoints at steps 8 and 10 at least met a dead actor

    rows = _rows(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert not (run_dir / "resumes.jsonl").exists()  # no worker failed
    assert rows[-1]["mining_skipped_saves"] >= 1
    assert (run_dir / "checkpoints" / "step-000010" / "complete.json").is_file()
    assert not (run_dir / "checkpoints" / "step-000010" / "mining_state.npz").exists()
    assert "mining: warning: the service did not save its state for the checkpoint" in capsys.readouterr().err


def test_a_torn_mining_state_file_starts_the_service_fresh(ray_session, tmp_path: Path) -> None:
    """A state file cut in half (a crash mid-write on a file system without atomic renames):
    the actor starts fresh, counted, instead of failing in its constructor at every restart."""
    import numpy as np

    from dml_dist.config import MiningConfig
    from dml_dist.mining.actor import start_mining_actor
    from dml_dist.mining.service import MiningService

    config = MiningConfig(save_every_steps=0)
    bank_path = tmp_path / "mining_bank.npz"
    service = MiningService(50, 8, config, seed=0)
    service.publish(1, np.arange(50), np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32))
    service.save(str(bank_path))
    bank_path.write_bytes(bank_path.read_bytes()[: bank_path.stat().st_size // 2])

    actor = start_mining_actor("test-torn", 50, 8, config, seed=0, checkpoint_path=str(bank_path))
    try:
        stats = ray_session.get(actor.stats.remote(), timeout=60)
        assert stats["fresh_starts"] == 1 and stats["latest_step"] == 0 and stats["coverage"] == 0.0
        assert ray_session.get(actor.next_classes.remote(5, 10), timeout=60).reason == "warmup"
    finally:
        ray_session.kill(actor, no_restart=True)
