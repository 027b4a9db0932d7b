"""Shared fixtures: a small procedural data set and one Ray instance for the whole session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dml_dist.config import DataConfig, ProceduralDataConfig
from dml_dist.distributed.collectives import free_local_port

REPO = Path(__file__).resolve().parents[1]
# The Omniglot zip of the tests that use real images (skipped without it): $DML_DIST_OMNIGLOT (as the
# bench suites' --omniglot), else the development machine's copy beside the checkout.
OMNIGLOT_ZIP = Path(
    os.environ.get("DML_DIST_OMNIGLOT") or REPO.parent / "shared" / "data" / "omniglot" / "images_background_small1.zip"
)


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
    from dml_dist.observability.logging import local_ray_env

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    for key, value in local_ray_env().items():  # as `dml-dist train` sets up a local instance (before `import ray`)
        os.environ.setdefault(key, value)
    import ray

    ray.init(address="local", num_cpus=4, dashboard_host="127.0.0.1", log_to_driver=True)
    yield ray
    ray.shutdown()


def _wait_http(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (401 where token authentication is on)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="session")
def prometheus_server(ray_session, tmp_path_factory: pytest.TempPathFactory):
    """A real Prometheus (Debian's package) on 127.0.0.1 with cluster/prometheus/prometheus.yml,
    reading the discovery file of this session's own Ray instance: the shipped path,
    /tmp/ray/prom_metrics_service_discovery.json, is a link to the newest Ray session on the
    machine, which is another instance's while other Ray instances run here.

    Yields its base URL, or None when the binary is absent and DML_DIST_REQUIRE_PROMETHEUS is
    unset (``.ci/run`` installs it and sets that variable, so CI never skips).
    """
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("DML_DIST_REQUIRE_PROMETHEUS"):
            raise RuntimeError("prometheus is not installed (apt-get install prometheus)")
        yield None
        return
    port = free_local_port()
    storage = tmp_path_factory.mktemp("prometheus")
    from ray._private import worker

    session_dir = Path(worker._global_node.get_session_dir_path())
    shipped = (REPO / "cluster" / "prometheus" / "prometheus.yml").read_text()
    config = storage / "prometheus.yml"
    sd_file = session_dir / "prom_metrics_service_discovery.json"
    config.write_text(shipped.replace("/tmp/ray/prom_metrics_service_discovery.json", str(sd_file)))
    shutil.copy(REPO / "cluster" / "prometheus" / "alerts.yml", storage)  # rule_files: beside the config
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={storage}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(storage / "prometheus.log").open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/-/ready", 30)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def small_data_settings(small_data: DataConfig) -> dict[str, object]:
    """``--set`` overrides that point a run at the session's small procedural data set."""
    proc = small_data.procedural
    return {
        "data.cache_dir": small_data.cache_dir,
        "data.samples_per_shard": small_data.samples_per_shard,
        "data.procedural.num_classes": proc.num_classes,
        "data.procedural.num_test_classes": proc.num_test_classes,
        "data.procedural.images_per_class": proc.images_per_class,
    }


def set_args(settings: dict[str, object]) -> list[str]:
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


def mining_actor_of(ray, run_dir: Path):  # type: ignore[no-untyped-def]
    """The alive mining actor of the run in ``run_dir`` (named after the run, ``eval.json``'s
    ``job``, plus a unique suffix: ``mining/actor.py``)."""
    from ray.util.state import list_actors

    from dml_dist.mining.actor import mining_actor_name

    prefix = mining_actor_name(json.loads((run_dir / "eval.json").read_text())["job"]) + "-"
    address = ray.get_runtime_context().gcs_address  # other Ray instances may run here
    alive = list_actors(address=address, filters=[("state", "=", "ALIVE")])
    (name,) = [a.name for a in alive if (a.name or "").startswith(prefix)]
    return ray.get_actor(name)


@pytest.fixture(scope="session")
def trained_run(
    small_data: DataConfig, ray_session, prometheus_server, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The quickstart scaled down (600 classes, N = 128, 60 steps) through the real CLI with 2 Ray
    workers, while Prometheus (when installed) scrapes the workers."""
    from dml_dist.cli import main

    run_dir = tmp_path_factory.mktemp("runs") / "quick"
    overrides = {
        **small_data_settings(small_data),
        "batch.num_classes": 128,
        "train.eval_every": 30,
        "train.checkpoint_every": 30,
        "train.log_every": 5,
        "mining.enabled": True,  # the quickstart leaves it off (docs/results/mining.md); the service is under test
        "mining.warmup_coverage": 0.5,
        "mining.warmup_steps": 10,
        "mining.ramp_steps": 10,
    }
    args = [
        "train",
        str(REPO / "configs" / "quickstart.yaml"),
        "--run-dir",
        str(run_dir),
        "--workers",
        "2",
        "--steps",
        "60",
    ]
    started = time.time()
    assert main(args + set_args(overrides)) == 0
    (run_dir / "test-window.json").write_text(json.dumps({"start": started, "end": time.time()}))
    return run_dir
