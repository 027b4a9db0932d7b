"""A user's second hour, through the real CLI: data paths that are never silently replaced, a run
that asks for GPUs a cluster does not have, one run name everywhere, the cluster on-ramp
(token, address, job errors), lr and samples/s per worker, and a plain install without faiss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from dml_dist.cli import main
from dml_dist.config import DataConfig
from tests.conftest import set_args, small_data_settings
from tests.unit.data.test_data import make_folder

DML_DIST = str(Path(sys.executable).parent / "dml-dist")


def _run_cli(args: list[str], timeout: float, env: dict[str, str | None] | None = None):
    """``dml-dist ARGS`` in its own process (its own local Ray instance unless --address); ``env``
    adds variables (None: removes one)."""
    full: dict[str, str | None] = {
        k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
    }
    full.update(env or {})
    chosen = {k: v for k, v in full.items() if v is not None}
    return subprocess.run([DML_DIST, *args], capture_output=True, text=True, timeout=timeout, env=chosen)


def _one_error_line(stderr: str) -> str:
    """The CLI's last stderr line, checked to be its one error line (no traceback)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("dml-dist: error: "), stderr[-3000:]
    return line


@pytest.fixture(scope="module")
def image_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``dml-dist shards`` of 10 classes x 4 images: ROOT/train (8 classes), ROOT/test (2 classes)."""
    root = tmp_path_factory.mktemp("second-hour")
    make_folder(root / "images", [4] * 10)
    assert main(["shards", str(root / "images"), str(root / "shards")]) == 0
    return root / "shards"


# ----------------------------------------------------------------------------- 1. data paths
def test_given_data_is_checked_before_anything_is_generated(
    image_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    base = ["train", "quickstart", "--run-dir", str(tmp_path / "run"), "--set", f"data.cache_dir={cache}"]
    images = image_shards.parent / "images"
    cases = {
        str(tmp_path / "shrads"): f"data.train_shards: {tmp_path / 'shrads'} does not exist",
        str(images): f"holds images, not shards; run `dml-dist shards {images} OUT` first",
        str(image_shards / "train"): "data.eval_shards: ",  # one shard directory, no held-out set given
    }
    for data, expected in cases.items():
        assert main([*base, "--data", data]) == 2
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
    assert main([*base, "--eval-data", str(image_shards / "test")]) == 2  # held-out shards but nothing to train on
    assert "data.train_shards: " in capsys.readouterr().err
    # A config written for a real data set does not train on generated glyphs in its place.
    monkeypatch.chdir(tmp_path)
    assert main(["train", "omniglot", "--set", f"data.cache_dir={cache}"]) == 2
    assert "data.train_shards: data/shards/omniglot/train does not exist" in capsys.readouterr().err
    assert not cache.exists() and not (tmp_path / "run").exists()  # nothing generated, nothing written


# ----------------------------------------------------------------------------- 1, 3, 6: one real run
def _train_view_runs() -> list[dict]:
    """The runs of the Ray dashboard's Train view, read from Ray's state API."""
    from ray._private import worker
    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

    url = worker._global_node.address_info["webui_url"]
    request = urllib.request.Request(f"http://{url}/api/train/v2/runs/v1", headers=get_auth_headers_if_auth_enabled({}))
    with urllib.request.urlopen(request, timeout=30) as response:
        runs: list[dict] = json.loads(response.read())["train_runs"]
    return runs


def test_run_on_a_shard_root_says_what_it_trains_on_under_one_name(
    image_shards: Path, ray_session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "hour-run"
    overrides = {"batch.num_classes": 4, "train.eval_every": 0, "train.log_every": 2, "eval.gallery_queries": 0}
    args = ["train", "quickstart", "--data", str(image_shards), "--run-dir", str(run_dir), "--workers", "2"]
    assert main([*args, "--steps", "4", *set_args(overrides)]) == 0
    out = capsys.readouterr().out
    train, held = (image_shards / "train").resolve(), (image_shards / "test").resolve()
    assert f"train: data: shards: train {train} (8 classes); held out {held} (2 classes)" in out
    assert "train: run hour-run: 2 workers" in out
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["num_classes"] == 2  # the held-out split of --data, not a generated set
    assert evaluation["job"] == "hour-run"  # the Prometheus `run` label of the workers' series
    assert [run["status"] for run in _train_view_runs() if run["name"] == "hour-run"] == ["FINISHED"]
    assert (run_dir / "checkpoints" / "step-000004").is_dir()  # Ray Train's run directory is the run's own
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    for row in rows:
        assert row["lr"] == pytest.approx(0.002)  # configs/quickstart.yaml: engine.lr, constant schedule
        assert row["samples_per_second_per_worker"] == pytest.approx(row["samples_per_second"] / 2)


def test_train_view_name_is_the_prometheus_run_label(prometheus_server: str | None, trained_run: Path) -> None:
    if prometheus_server is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus; .ci/run installs it)")
    window = json.loads((trained_run / "test-window.json").read_text())
    params = urllib.parse.urlencode(
        {"query": "ray_dml_dist_steps_total", "start": window["start"], "end": window["end"] + 15, "step": "1"}
    )
    with urllib.request.urlopen(f"{prometheus_server}/api/v1/query_range?{params}", timeout=10) as response:
        labels = {s["metric"]["run"] for s in json.loads(response.read())["data"]["result"]}
    assert trained_run.name in labels
    assert trained_run.name in {run["name"] for run in _train_view_runs()}


# ----------------------------------------------------------------------------- 2 and 4: the cluster
def test_gpus_a_local_cluster_lacks_fail_at_once(small_data: DataConfig, tmp_path: Path) -> None:
    """A local Ray instance (no GPU here, no autoscaler) and ``train.use_gpu: true``."""
    settings = {**small_data_settings(small_data), "train.use_gpu": "true", "batch.num_classes": 128}
    started = time.monotonic()
    done = _run_cli(["train", "quickstart", "--run-dir", str(tmp_path / "gpu"), *set_args(settings)], timeout=180)
    line = _one_error_line(done.stderr)
    assert done.returncode == 2 and line.startswith("dml-dist: error: train.use_gpu: "), line
    assert "--set train.use_gpu=false" in line
    assert not (tmp_path / "gpu" / "config.yaml").exists()  # refused before the run wrote its files
    print(f"refused in {time.monotonic() - started:.0f} s: {line}")


def test_train_joins_a_token_cluster_and_names_a_refused_token(
    ray_session, small_data: DataConfig, tmp_path: Path
) -> None:
    """``train --address`` picks up the token (RAY_AUTH_MODE unset) and reaches the cluster's
    resource check; a wrong token is one line."""
    from ray._private import worker

    gcs = worker._global_node.gcs_address
    settings = {**small_data_settings(small_data), "train.use_gpu": "true", "batch.num_classes": 128}
    args = ["train", "quickstart", "--address", gcs, "--run-dir", str(tmp_path / "joined"), *set_args(settings)]
    joined = _run_cli(args, timeout=180, env={"RAY_AUTH_MODE": None})  # the session's token file is found
    assert _one_error_line(joined.stderr).startswith("dml-dist: error: train.use_gpu: "), joined.stderr[-2000:]
    refused = _run_cli(args, timeout=180, env={"RAY_AUTH_TOKEN": "0" * 64, "RAY_AUTH_MODE": "token"})
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr[-2000:]
    assert "refused this client's authentication token" in _one_error_line(refused.stderr)


def test_jobs_errors_are_one_line_and_the_address_comes_as_ray_job_takes_it(ray_session, tmp_path: Path) -> None:
    from ray._private import worker

    dashboard = f"http://{worker._global_node.address_info['webui_url']}"
    missing = _run_cli(["jobs", "logs", "raysubmit_BADID", "--address", dashboard], timeout=60)
    line = _one_error_line(missing.stderr)
    assert missing.returncode == 2 and line.startswith("dml-dist: error: jobs logs raysubmit_BADID: no such job"), line
    # RAY_API_SERVER_ADDRESS wins over RAY_ADDRESS, as for `ray job`.
    env = {"RAY_API_SERVER_ADDRESS": dashboard, "RAY_ADDRESS": "http://127.0.0.1:9"}
    assert _run_cli(["jobs", "list"], timeout=60, env=env).returncode == 0
    refused = _run_cli(
        ["jobs", "list", "--address", dashboard], 60, {"RAY_AUTH_TOKEN": "0" * 64, "RAY_AUTH_MODE": "token"}
    )
    assert refused.returncode == 2 and "authentication token" in _one_error_line(refused.stderr)


def test_submit_passes_the_data_and_the_run_name(
    ray_session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ray._private import worker
    from ray.job_submission import JobSubmissionClient

    from dml_dist.distributed.ray_auth import enable_token_auth

    dashboard = f"http://{worker._global_node.address_info['webui_url']}"
    (tmp_path / "empty").mkdir()
    args = ["submit", "quickstart", "--address", dashboard, "--working-dir", str(tmp_path / "empty"), "--no-wait"]
    args += ["--data", "/cluster/shards", "--eval-data", "/cluster/held-out", "--steps", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    job_id = out.split("submitted job ")[1].split(";")[0]
    run_dir = out.split("run directory ")[1].split(" ")[0]
    assert Path(run_dir).name.startswith("quickstart-")  # the default `runs/<config>-<time>`, named here
    enable_token_auth()
    jobs = JobSubmissionClient(dashboard)
    info = jobs.get_job_info(job_id)
    assert info.metadata["dml_dist_run"] == Path(run_dir).name
    assert "--data /cluster/shards --eval-data /cluster/held-out" in info.entrypoint
    jobs.stop_job(job_id)  # what the job does on the cluster is `train --data` (above); it is not needed here


# ----------------------------------------------------------------------------- 7. install
def test_without_faiss_train_and_eval_stop_at_once_with_the_command(tmp_path: Path) -> None:
    """A plain install (no ``[cpu]``/``[gpu]`` extra): ``import faiss`` fails."""
    shadow = tmp_path / "shadow" / "faiss"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'faiss'\")\n")
    env = {"PYTHONPATH": f"{tmp_path / 'shadow'}:{os.environ.get('PYTHONPATH', '')}"}
    cache = tmp_path / "cache"
    for args in (
        ["train", "quickstart", "--run-dir", str(tmp_path / "run"), "--set", f"data.cache_dir={cache}"],
        ["eval", str(tmp_path / "run")],
    ):
        done = _run_cli(args, timeout=60, env=env)
        line = _one_error_line(done.stderr)
        assert done.returncode == 2 and "pip install 'dml-dist[cpu]'" in line, line
    assert not cache.exists() and not (tmp_path / "run").exists()
