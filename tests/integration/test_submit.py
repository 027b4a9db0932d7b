"""A real Ray head (``ray start --head`` on 127.0.0.1, token authentication on) receives a job
from ``dml-dist submit``; the job trains on 1 worker and writes eval.json. The same config on
2 workers (the session's ``trained_run``) keeps the global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dml_dist.cli import main
from dml_dist.config import DataConfig
from dml_dist.distributed.collectives import free_local_port
from tests.conftest import REPO, _wait_http, set_args, small_data_settings


@pytest.fixture(scope="module")
def ray_head():
    """Dashboard address of a Ray head started for this module, in its own temp dir and ports."""
    temp_dir = tempfile.mkdtemp(prefix="rh-", dir="/tmp")  # short: Ray's socket paths must stay short
    port, dashboard, agent = free_local_port(), free_local_port(), free_local_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    cmd = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
        f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--dashboard-agent-listen-port={agent}", "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={temp_dir}",
    ]  # fmt: skip
    log = open(Path(temp_dir) / "head.log", "w")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_http(f"{address}/api/version", 90)
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        subprocess.run(["pkill", "-f", temp_dir], check=False)  # daemons that left the process group
        log.close()


def test_submitted_job_trains_and_keeps_the_global_batch(
    ray_head: str, small_data: DataConfig, trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "submitted"
    overrides = {
        **small_data_settings(small_data),
        "batch.num_classes": 128,
        "train.eval_every": 0,
        "train.log_every": 5,
    }
    args = ["submit", "configs/quickstart.yaml", "--address", ray_head, "--working-dir", str(REPO)]
    args += ["--run-dir", str(run_dir), "--workers", "1", "--steps", "10"]
    args += set_args(overrides)
    started = time.monotonic()
    assert main(args) == 0, capsys.readouterr().out[-3000:]
    out = capsys.readouterr().out
    job_id = out.split("submitted job ")[1].split(";")[0]
    assert f"{job_id}: SUCCEEDED" in out

    result = json.loads((run_dir / "eval.json").read_text())
    assert result["step"] == 10 and 0 < result["recall"]["1"] <= 1

    assert main(["jobs", "status", job_id, "--address", ray_head]) == 0
    assert capsys.readouterr().out.strip() == "SUCCEEDED"
    assert main(["jobs", "list", "--address", ray_head]) == 0
    assert job_id in capsys.readouterr().out

    one = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert {r["global_batch"] for r in one} == {r["global_batch"] for r in two} == {256}
    rate_one = sorted(r["samples_per_second"] for r in one)[len(one) // 2]
    rate_two = sorted(r["samples_per_second"] for r in two)[len(two) // 2]
    print(f"global batch 256: 1 worker {rate_one:.0f} samples/s, 2 workers {rate_two:.0f} samples/s "
          f"(job took {time.monotonic() - started:.0f} s)")  # fmt: skip


def test_bad_config_fails_before_submission(ray_head: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["submit", "configs/quickstart.yaml", "--address", ray_head, "--working-dir", str(REPO)]
    assert main([*args, "--set", "batch.num_classes=321"]) == 2
    assert "batch.num_classes" in capsys.readouterr().err
