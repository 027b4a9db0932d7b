"""The run directory's lease (``train/run_lease.py``) and the checks of a fresh run, a resume and
the default run directory (``train/run_directory.py``), with real processes and files."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dml_dist.config.loader import config_to_dict, load_config
from dml_dist.train import run_directory, run_lease
from dml_dist.train.run_lease import LEASE, Lease, RunDirectoryBusy


def _write_lease(run_dir: Path, **fields: object) -> None:
    now = time.time()
    holder = {"host": socket.gethostname(), "pid": 1, "token": "other", "started": now, "heartbeat": now, **fields}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LEASE).write_text(json.dumps(holder))


def test_a_live_holder_keeps_the_directory_and_is_named(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lease(tmp_path, pid=holder.pid, ray_job_id="02000000")
        with pytest.raises(RunDirectoryBusy, match=rf"pid {holder.pid} on {socket.gethostname()}, Ray job 02000000"):
            Lease(tmp_path).acquire()
        assert json.loads((tmp_path / LEASE).read_text())["pid"] == holder.pid  # left as it was
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lease_is_taken_over_and_released(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lease(tmp_path, pid=dead.pid)  # this host, process gone: stale at once
    lease = Lease(tmp_path)
    lease.acquire()
    assert json.loads((tmp_path / LEASE).read_text())["token"] == lease.holder.token
    lease.release()
    assert not (tmp_path / LEASE).exists()
    # Another host's lease: live until its heartbeat is older than the expiry.
    _write_lease(tmp_path, host="elsewhere", heartbeat=time.time() - 10)
    with pytest.raises(RunDirectoryBusy, match="on elsewhere"):
        Lease(tmp_path).acquire()
    _write_lease(tmp_path, host="elsewhere", heartbeat=time.time() - run_lease.EXPIRY_SECONDS - 1)
    with run_lease.held(tmp_path) as taken:
        assert json.loads((tmp_path / LEASE).read_text())["token"] == taken.holder.token


def test_release_leaves_a_lease_taken_by_another_run(tmp_path: Path) -> None:
    lease = Lease(tmp_path / "run")
    lease.acquire()
    _write_lease(tmp_path / "run", token="someone-else")
    lease.release()
    assert json.loads((tmp_path / "run" / LEASE).read_text())["token"] == "someone-else"


def test_a_refused_start_leaves_no_directory_it_made(tmp_path: Path) -> None:
    with run_lease.held(tmp_path / "new"):
        assert (tmp_path / "new" / LEASE).is_file()
    assert not (tmp_path / "new").exists()


def test_default_run_directories_never_meet(tmp_path: Path) -> None:
    first = run_directory.default_run_dir(tmp_path / "runs" / "quickstart")
    assert isinstance(first, Path) and first.name.startswith(f"quickstart-{time.strftime('%Y%m%d')}")
    first.mkdir(parents=True)
    second = run_directory.default_run_dir(tmp_path / "runs" / "quickstart")
    assert second != first and not Path(second).exists()


def test_fresh_runs_and_resumes_are_checked_against_the_directory(tmp_path: Path) -> None:
    config = load_config(None, ["train.steps=6"])
    assert run_directory.claim(tmp_path / "new", config, resume=False) is False
    assert run_directory.claim(tmp_path / "new", config, resume="auto") is False
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ValueError, match=r"already holds files of another run \(metrics.jsonl\)"):
        run_directory.claim(taken, config, resume=False)
    with pytest.raises(ValueError, match="no complete checkpoint"):
        run_directory.claim(taken, config, resume=True)
    # --resume auto over an earlier attempt of the same run (no checkpoint): a fresh start...
    (taken / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config)))
    assert run_directory.claim(taken, config, resume="auto") is False
    # ... but not over another config's files.
    other = load_config(None, ["train.steps=6", "engine.lr=0.5", "train.seed=3", "train.log_every=1"])
    with pytest.raises(
        ValueError,
        match=r"differs .* in engine\.lr \(0\.001 -> 0\.5\), train\.seed \(0 -> 3\); pass --allow-changes engine\.lr,train\.seed",
    ):
        run_directory.claim(taken, other, resume="auto")
    run_directory.check_unchanged(taken, other, ["engine", "train.seed"], what="--resume")
