"""A real 2-node Ray cluster on this machine whose nodes share no directory but the storage.

The head runs in the test's mount namespace; node 2 runs ``ray start`` inside ``unshare -m``
with a private tmpfs over /tmp, so it sees neither the head's /tmp (Ray's session files, the
driver's working directory, pytest's temporary directories) nor anything the driver writes
there. Only the storage (under /var/tmp) and the project's own files are visible to both.
Token authentication is on (``RAY_AUTH_MODE=token`` and a generated ``RAY_AUTH_TOKEN`` on both
nodes and the driver). One training run proves placement, resume after the node-2 worker is
killed, results under the storage and metrics of both ranks scraped by a real Prometheus. A
second run uses a URI storage (``s3://`` on an S3-compatible server on the head, moto's
standalone server) and is killed the same way.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dml_dist.distributed.collectives import free_local_port
from dml_dist.observability.logging import local_ray_env
from tests.conftest import REPO, _wait_http, set_args

RAY = str(Path(sys.executable).parent / "ray")

# Node 2's namespace: a private /tmp; the project directory stays visible even if it lies under /tmp.
NODE2_SCRIPT = r"""
set -e
repo="$1"; shift
case "$repo" in
  /tmp/*) keep="$(mktemp -d /run/dml-dist-node2-XXXXXX)"; mount --bind "$repo" "$keep"
          mount -t tmpfs tmpfs /tmp; mkdir -p "$repo"; mount --bind "$keep" "$repo" ;;
  *)      mount -t tmpfs tmpfs /tmp ;;
esac
mkdir -p /tmp/dml-dist-node2-sees-only-this
exec "$@"
"""


# A small procedural set, one worker per node, no evaluation before the end (both runs below).
SMALL_SPREAD_RUN: dict[str, object] = {
    "data.samples_per_shard": 1000,
    "data.procedural.num_classes": 600,
    "data.procedural.num_test_classes": 100,
    "data.procedural.images_per_class": 8,
    "batch.num_classes": 64,
    "train.placement": "STRICT_SPREAD",
    "train.eval_every": 0,
}


@dataclass
class Cluster:
    gcs_address: str
    dashboard: str
    storage: Path
    head_temp_dir: Path
    node2_metrics_port: int
    env: dict[str, str]


def _ray_start(extra: list[str], temp_dir: str) -> list[str]:
    ports = {
        "--dashboard-agent-listen-port": free_local_port(),
        "--dashboard-agent-grpc-port": free_local_port(),
        "--runtime-env-agent-port": free_local_port(),
    }
    return [
        RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=2", "--disable-usage-stats",
        f"--temp-dir={temp_dir}", *(f"{flag}={port}" for flag, port in ports.items()), *extra,
    ]  # fmt: skip


def _stop(proc: subprocess.Popen, temp_dir: str) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
    subprocess.run(["pkill", "-9", "-f", temp_dir], check=False)  # daemons that left the process group


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        raise RuntimeError("the 2-node test needs root and unshare (util-linux) for node 2's mount namespace")
    storage = Path(tempfile.mkdtemp(prefix="dml-dist-storage-", dir="/var/tmp"))  # outside /tmp: both nodes
    head_temp = tempfile.mkdtemp(prefix="rmh-", dir="/tmp")  # short: Ray's socket paths must stay short
    node2_temp = f"/tmp/rmn-{secrets.token_hex(4)}"  # inside node 2's private /tmp
    port, dashboard, node2_metrics = free_local_port(), free_local_port(), free_local_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    for key in local_ray_env():  # set by the session's local instance; a cluster's nodes are not local
        env.pop(key, None)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_TRAIN_ENABLE_PRINT_PATCH="0")
    env.update(S3_CREDENTIALS, AWS_DEFAULT_REGION="us-east-1")  # as an IAM role would give every node
    head_cmd = _ray_start(
        ["--head", f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}"], head_temp
    )
    logs = Path(head_temp)
    head_log = open(logs / "head.log", "w")  # noqa: SIM115 (closed at teardown)
    head = subprocess.Popen(head_cmd, env=env, stdout=head_log, stderr=subprocess.STDOUT, start_new_session=True)
    node2_cmd = _ray_start([f"--address=127.0.0.1:{port}", f"--metrics-export-port={node2_metrics}"], node2_temp)
    node2_log = open(logs / "node2.log", "w")  # noqa: SIM115
    node2 = None
    try:
        _wait_http(f"http://127.0.0.1:{dashboard}/api/version", 90)
        node2 = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "bash", "-c", NODE2_SCRIPT, "node2", str(REPO), *node2_cmd],
            env=env, stdout=node2_log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        _wait_for_nodes(f"127.0.0.1:{port}", env, 2, logs)
        yield Cluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}", storage, logs, node2_metrics, env)
    finally:
        if node2 is not None:
            _stop(node2, node2_temp)
        _stop(head, head_temp)
        head_log.close()
        node2_log.close()
        shutil.rmtree(storage, ignore_errors=True)


@dataclass
class S3:
    storage: str  # the URI a user passes as --storage (pyarrow options in the query)

    def read(self, *parts: str) -> bytes:
        from dml_dist import storage as locations

        return locations.read_bytes(locations.join(self.storage, *parts))

    def exists(self, *parts: str) -> bool:
        from dml_dist import storage as locations

        return locations.exists(locations.join(self.storage, *parts))


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "dml-dist-test", "AWS_SECRET_ACCESS_KEY": "dml-dist-test"}


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3]:
    """An S3-compatible server on the head (moto's standalone server: a real HTTP S3 API), with
    one bucket; every node reaches it on 127.0.0.1 with the credentials in the cluster's env."""
    binary = Path(sys.executable).parent / "moto_server"
    if not binary.is_file():
        raise RuntimeError("moto_server is missing: pip install 'moto[server]' (the test extra)")
    port = free_local_port()
    proc = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/", 30)
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/dml-dist", method="PUT"), timeout=10)
        yield S3(f"s3://dml-dist/shared?endpoint_override=127.0.0.1:{port}&scheme=http")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_for_nodes(address: str, env: dict[str, str], count: int, logs: Path) -> None:
    deadline = time.monotonic() + 120
    probe = "import ray; ray.init(address=%r, log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"
    while time.monotonic() < deadline:
        out = subprocess.run(
            [sys.executable, "-c", probe % address], env=env, capture_output=True, text=True, timeout=120
        )
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(2)
    raise TimeoutError(f"{count} Ray nodes did not come up; see {logs}/head.log and node2.log")


def _train(cluster: Cluster, cwd: Path, *args: str) -> subprocess.Popen:
    settings = {
        **SMALL_SPREAD_RUN,
        "train.log_every": 2,
        "train.checkpoint_every": 10,
        "mining.enabled": True,  # the service's state goes through Ray into the checkpoint in the storage
        "mining.warmup_coverage": 0.2,
        "mining.warmup_steps": 4,
        "mining.ramp_steps": 4,
    }
    cmd = [sys.executable, "-m", "dml_dist", "train", str(REPO / "configs" / "quickstart.yaml")]
    cmd += ["--address", cluster.gcs_address, *args, *set_args(settings)]
    return subprocess.Popen(cmd, cwd=cwd, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _rank_on_node2(placement: list[dict]) -> int:
    """The rank whose worker runs on node 2: its process sees node 2's mount namespace, not ours."""
    ours = os.readlink("/proc/self/ns/mnt")
    on_node2 = [p["rank"] for p in placement if os.readlink(f"/proc/{p['pid']}/ns/mnt") != ours]
    assert len(on_node2) == 1, placement
    return int(on_node2[0])


def _wait_until(done: Callable[[], bool], what: str, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen (driver exit code {proc.poll()})")
        time.sleep(0.5)


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float) -> None:
    _wait_until(path.is_file, f"{path} appearing", proc, seconds)


def _last_step(metrics_jsonl: str) -> int:
    lines = metrics_jsonl.splitlines()
    return int(json.loads(lines[-1])["step"]) if lines else 0


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, seconds: float) -> None:
    metrics = run_dir / "metrics.jsonl"
    done = lambda: metrics.is_file() and _last_step(metrics.read_text()) >= step  # noqa: E731
    _wait_until(done, f"step {step}", proc, seconds)


@pytest.fixture(scope="module")
def head_prometheus(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """A real Prometheus on the head with the shipped configuration, pointed at this head's Ray
    discovery file (the test's head has its own temp dir; a default head writes /tmp/ray/...)."""
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("DML_DIST_REQUIRE_PROMETHEUS"):
            raise RuntimeError("prometheus is not installed (apt-get install prometheus)")
        yield None
        return
    data = tmp_path_factory.mktemp("prometheus")
    shipped = (REPO / "cluster" / "prometheus" / "prometheus.yml").read_text()
    sd_file = cluster.head_temp_dir / "prom_metrics_service_discovery.json"
    config = data / "prometheus.yml"
    config.write_text(shipped.replace("/tmp/ray/prom_metrics_service_discovery.json", str(sd_file)))
    port = free_local_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}", f"--storage.tsdb.path={data}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_http(f"http://127.0.0.1:{port}/-/ready", 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def killed_run(cluster: Cluster, head_prometheus: str | None, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """30 steps, one worker per node; the node-2 worker is SIGKILLed after the step-10 checkpoint."""
    cwd = tmp_path_factory.mktemp("driver")  # the driver works from the head's /tmp
    started = time.time()
    proc = _train(cluster, cwd, "--storage", str(cluster.storage), "--run-dir", "runs/two-nodes", "--steps", "30")
    run_dir = cluster.storage / "runs" / "two-nodes"
    try:
        _wait_for(run_dir / "placement.json", proc, 300)
        placement = json.loads((run_dir / "placement.json").read_text())
        _wait_for(run_dir / "checkpoints" / "step-000010" / "complete.json", proc, 300)
        _wait_for_step(run_dir, 14, proc, 300)  # step 10's report is registered: 12 and 14 were reported after it
        killed_rank = _rank_on_node2(placement)
        os.kill(placement[killed_rank]["pid"], signal.SIGKILL)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    return {
        "run_dir": run_dir,
        "placement": placement,
        "out": out,
        "code": proc.returncode,
        "killed_rank": killed_rank,
        "window": (started, time.time()),
        "prometheus": head_prometheus,
    }


@pytest.fixture(scope="module")
def killed_uri_run(cluster: Cluster, s3_server: S3, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """As ``killed_run``, with ``--storage s3://...``: nothing of the run touches a shared disk."""
    cwd = tmp_path_factory.mktemp("driver-uri")
    proc = _train(cluster, cwd, "--storage", s3_server.storage, "--run-dir", "runs/uri", "--steps", "30")
    run = ("runs", "uri")
    try:
        _wait_until(lambda: s3_server.exists(*run, "placement.json"), "placement.json", proc, 300)
        placement = json.loads(s3_server.read(*run, "placement.json"))
        done = lambda: s3_server.exists(*run, "checkpoints", "step-000010", "complete.json")  # noqa: E731
        _wait_until(done, "the step-10 checkpoint", proc, 300)
        at_14 = lambda: _last_step(s3_server.read(*run, "metrics.jsonl").decode()) >= 14  # noqa: E731
        _wait_until(at_14, "step 14", proc, 300)
        killed_rank = _rank_on_node2(placement)
        os.kill(placement[killed_rank]["pid"], signal.SIGKILL)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    return {"placement": placement, "out": out, "code": proc.returncode, "killed_rank": killed_rank}


def test_auth_is_on_and_the_cluster_has_two_nodes(cluster: Cluster) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{cluster.dashboard}/api/jobs/", timeout=10)
    assert refused.value.code in (401, 403)


def test_two_node_run_resumes_after_its_node2_worker_is_killed(killed_run: dict) -> None:
    run_dir, out = killed_run["run_dir"], killed_run["out"]
    assert killed_run["code"] == 0, out[-4000:]
    first = killed_run["placement"]
    assert [p["rank"] for p in first] == [0, 1] and first[0]["node_id"] != first[1]["node_id"], first
    after = json.loads((run_dir / "placement.json").read_text())
    killed = killed_run["killed_rank"]
    assert after[0]["node_id"] != after[1]["node_id"] and after[killed]["pid"] != first[killed]["pid"], (first, after)
    resumed = [json.loads(line)["resumed_from"] for line in (run_dir / "resumes.jsonl").read_text().splitlines()]
    assert len(resumed) == 1 and resumed[0] >= 10, resumed
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(2, 31, 2))
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["step"] == 30 and result["recall"]["1"] > result["untrained_recall"]["1"], result
    assert (run_dir / "checkpoints" / "step-000030" / "complete.json").is_file()
    assert (run_dir / "embedder.pt").is_file() and (run_dir / "curves.png").is_file()
    assert list((killed_run["run_dir"].parent.parent / "data").glob("procedural-*/train/manifest.json"))
    print(f"2 nodes: placement {[(p['rank'], p['node_id'][:8]) for p in after]}, resumed from step {resumed[0]}, "
          f"R@1 {result['untrained_recall']['1']:.3f} untrained -> {result['recall']['1']:.3f}")  # fmt: skip


def test_a_uri_storage_run_resumes_from_its_checkpoint_in_the_bucket(killed_uri_run: dict, s3_server: S3) -> None:
    out, run = killed_uri_run["out"], ("runs", "uri")
    assert killed_uri_run["code"] == 0, out[-4000:]
    first = killed_uri_run["placement"]
    after = json.loads(s3_server.read(*run, "placement.json"))
    killed = killed_uri_run["killed_rank"]
    assert first[0]["node_id"] != first[1]["node_id"] and after[killed]["pid"] != first[killed]["pid"], (first, after)
    resumed = [json.loads(line)["resumed_from"] for line in s3_server.read(*run, "resumes.jsonl").splitlines()]
    assert len(resumed) == 1 and resumed[0] >= 10, resumed
    rows = [json.loads(line) for line in s3_server.read(*run, "metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows] == list(range(2, 31, 2))
    result = json.loads(s3_server.read(*run, "eval.json"))
    assert result["step"] == 30 and result["recall"]["1"] > result["untrained_recall"]["1"], result
    assert s3_server.exists(*run, "checkpoints", "step-000030", "complete.json")
    assert s3_server.exists(*run, "embedder.pt") and s3_server.exists(*run, "config.yaml")
    assert "run directory s3://dml-dist/shared/runs/uri?" in out, out[-2000:]  # the driver's summary
    print(f"2 nodes, s3 storage: resumed from step {resumed[0]}, "
          f"R@1 {result['untrained_recall']['1']:.3f} untrained -> {result['recall']['1']:.3f}")  # fmt: skip


def test_a_run_directory_node2_cannot_see_fails_before_training(cluster: Cluster, tmp_path: Path) -> None:
    private = tmp_path / "driver-only-run"  # under the head's /tmp, which node 2 does not see
    # The data where both nodes see it, so that the run directory is the one path node 2 lacks.
    visible_data = f"data.cache_dir={cluster.storage / 'data-cache'}"
    proc = _train(cluster, tmp_path, "--run-dir", str(private), "--steps", "5", "--set", visible_data)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("dml-dist: error:")]
    assert len(errors) == 1 and str(private) in errors[0] and "on node" in errors[0], out[-3000:]
    assert not (private / "checkpoints").exists()


def test_prometheus_on_the_head_scrapes_both_ranks(killed_run: dict, cluster: Cluster) -> None:
    url = killed_run["prometheus"]
    if url is None:
        pytest.skip("prometheus is not installed")
    run = json.loads((killed_run["run_dir"] / "eval.json").read_text())["job"]
    start, end = killed_run["window"]
    query = urllib.parse.urlencode(
        {"query": f'ray_dml_dist_steps_total{{run="{run}"}}', "start": start, "end": end + 20, "step": "2"}
    )
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{query}", timeout=10) as response:
        series = json.loads(response.read())["data"]["result"]
    # STRICT_SPREAD puts one rank on each node, either way round, and the restarted group may swap
    # them: the run's series come from both nodes' agents (node 2's by its port) and both ranks.
    instances = {(s["metric"]["rank"], s["metric"]["instance"]) for s in series}
    ports = {instance.rsplit(":", 1)[1] for _, instance in instances}
    assert len(ports) == 2 and str(cluster.node2_metrics_port) in ports, instances
    assert {rank for rank, _ in instances} == {"0", "1"}, instances
    scraped: dict[str, float] = {}
    for one in series:  # a restarted worker is a new series (Ray's WorkerId label): take the rank's best
        rank = one["metric"]["rank"]
        scraped[rank] = max(scraped.get(rank, 0.0), *(float(v[1]) for v in one["values"]))
    assert min(scraped.values()) >= 10, scraped  # scraped while training, not only at the end


def test_submitted_job_runs_across_both_nodes_on_the_storage(cluster: Cluster, killed_run: dict) -> None:
    """``dml-dist submit --storage``: Ray Jobs runs the driver in a node-local copy of the project,
    and the run and its generated data still land in the storage, with a worker on each node."""
    settings = {
        **SMALL_SPREAD_RUN,
    }
    cmd = [sys.executable, "-m", "dml_dist", "submit", "configs/quickstart.yaml", "--address", cluster.dashboard]
    cmd += ["--working-dir", str(REPO), "--storage", str(cluster.storage), "--run-dir", "runs/submitted"]
    cmd += ["--workers", "2", "--steps", "6", *set_args(settings)]
    out = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    run_dir = cluster.storage / "runs" / "submitted"
    assert json.loads((run_dir / "eval.json").read_text())["step"] == 6
    placement = json.loads((run_dir / "placement.json").read_text())
    assert placement[0]["node_id"] != placement[1]["node_id"], placement
