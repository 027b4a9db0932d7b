"""Faults survived and bad input refused, with real Ray workers, real processes killed, real
checkpoints corrupted (see docs/reliability.md for the table these tests back)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from dml_dist.cli import main
from dml_dist.config import DataConfig
from dml_dist.train import checkpoint
from tests.conftest import REPO, mining_actor_of, set_args, small_data_settings

RAY_PREFIX = re.compile(r"^(\x1b\[\d+m)?\(\w+ pid=\d+")


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


def _whole_and_resumed(small_data: DataConfig, root: Path, common: dict[str, object]) -> tuple[Path, Path]:
    """A 12-step run, and the same run stopped at step 6 and resumed to 12."""
    whole, halves = root / "whole", root / "halves"
    assert main(_train_args(small_data, whole, 12, **common)) == 0
    assert main(_train_args(small_data, halves, 6, **common)) == 0
    assert main([*_train_args(small_data, halves, 12, **common), "--resume", "--allow-changes", "train.steps"]) == 0
    return whole, halves


MEMORY_RUN: dict[str, object] = {
    "mining.enabled": False,
    "train.checkpoint_every": 6,
    "loss": "{name: multi_similarity}",
    "memory.size": 512,
    "memory.start_step": 2,
}
"""The settings of ``resumed_pair``'s runs."""


@pytest.fixture(scope="module")
def resumed_pair(small_data: DataConfig, ray_session, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(uninterrupted 12-step run, the same run stopped at step 6 and resumed to 12), with a
    cross-batch memory in use from step 2, so the resumed half needs the memory of step 6."""
    return _whole_and_resumed(small_data, tmp_path_factory.mktemp("resume"), MEMORY_RUN)


def test_resume_draws_the_same_batches_and_losses(resumed_pair: tuple[Path, Path]) -> None:
    whole, halves = resumed_pair
    a, b = _rows(whole), _rows(halves)
    assert [r["step"] for r in b] == list(range(1, 13))
    for row_a, row_b in zip(a, b, strict=True):
        assert row_b["loss"] == pytest.approx(row_a["loss"], rel=1e-5, abs=1e-6), row_a["step"]
    assert [json.loads(line)["resumed_from"] for line in (halves / "resumes.jsonl").read_text().splitlines()] == [6]
    assert b[6]["memory_fill"] == a[6]["memory_fill"] > 0  # step 7 ran with the restored memory
    assert b[6]["memory_age_max_steps"] == a[6]["memory_age_max_steps"]


@pytest.fixture(scope="module")
def mined_resumed_pair(
    small_data: DataConfig, ray_session, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """As ``resumed_pair`` with the mining service on (issue 14): mined batches from step 4, so
    the resumed half's classes come from the service state restored from the step-6 checkpoint."""
    root = tmp_path_factory.mktemp("resume-mined")
    common = {
        "mining.enabled": True,
        "mining.rule": "seed_neighbours",
        "mining.warmup_coverage": 0,
        "mining.warmup_steps": 2,
        "mining.ramp_steps": 2,
        "mining.timeout_s": 60,  # a late answer falls back to random classes; a loaded CI machine must not
        "train.checkpoint_every": 6,
    }
    return _whole_and_resumed(small_data, root, common)


def test_resume_with_mining_draws_the_same_batches_and_losses(mined_resumed_pair: tuple[Path, Path]) -> None:
    whole, halves = mined_resumed_pair
    a, b = _rows(whole), _rows(halves)
    assert [r["step"] for r in b] == list(range(1, 13))
    assert all(r["mined"] for r in a[3:])
    # ``fallbacks`` counts the service's random warm-up answers too (per process, so it restarts
    # at 0 on resume); once mining is on it must not grow: no answer was late.
    assert len({r["fallbacks"] for r in a[3:]}) == 1 and len({r["fallbacks"] for r in b[6:]}) == 1
    for row_a, row_b in zip(a, b, strict=True):
        assert row_b["mined"] == row_a["mined"], row_a["step"]
        assert row_b["loss"] == pytest.approx(row_a["loss"], rel=1e-5, abs=1e-6), row_a["step"]
    assert [json.loads(line)["resumed_from"] for line in (halves / "resumes.jsonl").read_text().splitlines()] == [6]


def test_corrupted_newest_checkpoint_falls_back_to_the_previous(
    resumed_pair: tuple[Path, Path], small_data: DataConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A truncated newest checkpoint is named and skipped, and ``--resume`` trains from the one
    before it: steps 7 to 12 again, with the losses of the uninterrupted run."""
    whole, halves = resumed_pair
    damaged = tmp_path / "damaged"
    shutil.copytree(halves, damaged)
    checkpoints = damaged / "checkpoints"
    assert checkpoint.latest_good(checkpoints) == checkpoint.GoodCheckpoint("step-000012", 12)
    model_file = checkpoints / "step-000012" / "mp_rank_00_model_states.pt"
    model_file.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])  # truncated
    assert checkpoint.latest_good(checkpoints) == checkpoint.GoodCheckpoint("step-000006", 6)
    assert "step-000012: mp_rank_00_model_states.pt has" in capsys.readouterr().err
    assert main([*_train_args(small_data, damaged, 12, **MEMORY_RUN), "--resume"]) == 0
    resumed = [json.loads(line)["resumed_from"] for line in (damaged / "resumes.jsonl").read_text().splitlines()]
    assert resumed == [6, 6]  # the first resume of ``halves``, then this one: from step 6, not 12
    rows = _rows(damaged)
    assert [r["step"] for r in rows] == list(range(1, 13))
    for row_a, row_b in zip(_rows(whole), rows, strict=True):
        assert row_b["loss"] == pytest.approx(row_a["loss"], rel=1e-5, abs=1e-6), row_a["step"]
    assert checkpoint.latest_good(checkpoints) == checkpoint.GoodCheckpoint("step-000012", 12)  # saved again


def test_a_run_directory_with_checkpoints_is_not_overwritten(
    resumed_pair: tuple[Path, Path], small_data: DataConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = resumed_pair[0]
    before = (whole / "metrics.jsonl").read_text()
    assert main(_train_args(small_data, whole, 12)) == 2
    assert "already holds checkpoints: pass --resume" in capsys.readouterr().err
    assert (whole / "metrics.jsonl").read_text() == before


def _wait_for_step(run_dir: Path, step: int, deadline: float) -> int:
    while time.monotonic() < deadline:
        try:
            rows = _rows(run_dir)
        except (FileNotFoundError, json.JSONDecodeError):
            rows = []
        if rows and rows[-1]["step"] >= step:
            return int(rows[-1]["step"])
        time.sleep(0.2)
    raise TimeoutError(f"step {step} not reached")


def test_killed_worker_and_killed_mining_actor_are_survived(
    small_data: DataConfig, ray_session, tmp_path: Path
) -> None:
    from ray.util.state import list_actors

    run_dir = tmp_path / "faults"
    faults: dict[str, int] = {}

    def inject() -> None:
        deadline = time.monotonic() + 300
        faults["actor_killed_at"] = _wait_for_step(run_dir, 4, deadline)
        ray_session.kill(mining_actor_of(ray_session, run_dir), no_restart=False)
        step = _wait_for_step(run_dir, 14, deadline)
        address = ray_session.get_runtime_context().gcs_address  # other Ray instances may run here
        workers = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
        os.kill(int(workers[0].pid), signal.SIGKILL)
        faults["worker_killed_at"] = step

    injector = threading.Thread(target=inject, daemon=True)
    injector.start()
    args = _train_args(
        small_data, run_dir, 30,
        **{
            "train.checkpoint_every": 10,
            "mining.enabled": True,
            "mining.warmup_coverage": 0.2,
            "mining.warmup_steps": 2,
            "mining.ramp_steps": 2,
            "mining.timeout_s": 1.0,
        },
    )  # fmt: skip
    assert main(args) == 0
    injector.join(timeout=5)
    assert "worker_killed_at" in faults, faults

    rows = _rows(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert json.loads((run_dir / "eval.json").read_text())["step"] == 30
    resumed = [json.loads(line)["resumed_from"] for line in (run_dir / "resumes.jsonl").read_text().splitlines()]
    assert len(resumed) == 1 and 0 < faults["worker_killed_at"] - resumed[0] <= 10, (faults, resumed)
    # ``fallbacks`` is cumulative per process and warm-up answers raise it too: compare the first
    # process's count after the actor's kill with its count at the kill.
    first_process = rows[: resumed[0]]
    killed_at = faults["actor_killed_at"]
    assert killed_at < resumed[0], (faults, resumed)
    assert first_process[-1]["fallbacks"] > first_process[killed_at - 1]["fallbacks"], "no fallback after the kill"
    assert any(r["mined"] for r in rows if r["step"] > resumed[0] + 5), "mining did not come back"


def test_non_finite_loss_stops_the_job_naming_the_step(
    small_data: DataConfig, ray_session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under the default ``train.max_failures``: the stop ends the run once, without a retry."""
    run_dir = tmp_path / "diverge"
    args = _train_args(
        small_data, run_dir, 20, **{"engine.lr": 1e30, "train.max_nonfinite_steps": 3, "mining.enabled": False}
    )
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("training stopped: non-finite loss or gradient: step") == 1 and "had loss nan" in err, err[-2000:]
    steps = [r["step"] for r in _rows(run_dir)]
    assert steps == list(range(1, len(steps) + 1)) and steps[-1] < 20, steps  # one attempt, stopped early
    assert not (run_dir / "resumes.jsonl").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch.num_classes": 1000}, "batch.num_classes: N=1000 is larger than the 500 training classes"),
        ({"data.train_shards": "/nonexistent/shards"}, "/nonexistent/shards"),
        ({"loss.name": "nope"}, "loss.name: unknown loss 'nope'"),
    ],
)
def test_bad_input_fails_at_start_with_one_line(
    small_data: DataConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides: dict, message: str
) -> None:
    assert main(_train_args(small_data, tmp_path / "bad", 5, **overrides)) == 2
    # Lines Ray forwards from earlier runs' workers in this session ("(RayTrainWorker pid=...)")
    # may arrive late; they are not this command's output.
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines() if not RAY_PREFIX.match(line))
    assert message in err and len(err.splitlines()) == 1, err
