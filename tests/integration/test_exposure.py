"""A local `dml-dist train` exposes no Ray endpoint beyond the machine: every socket its Ray
instance listens on (GCS, raylet, dashboard, dashboard agent and its metrics export, runtime-env
agent, idle workers) is bound to loopback.

Not covered: the training workers' own ``torch.distributed`` rendezvous store (rank 0's
TCPStore), which torch binds to every interface with no option to choose; its sockets are left
out below, by process, and named in docs/reliability.md.

The run is a separate process, as a user starts it: Ray reads the setting that picks the node's
address when it is imported, which this test process may have done long ago."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from dml_dist.config import DataConfig
from tests.conftest import REPO, set_args, small_data_settings


def _listening(root: psutil.Process) -> set[tuple[str, str]]:
    """(address, process name) of every listening TCP socket of ``root`` and its descendants."""
    found: set[tuple[str, str]] = set()
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return found
    for process in processes:
        try:
            for conn in process.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, process.name()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or ip).is_loopback


def test_a_local_run_listens_on_loopback_only(small_data: DataConfig, tmp_path: Path) -> None:
    settings = {
        **small_data_settings(small_data),
        "batch.num_classes": 64,
        "train.eval_every": 0,
        "metrics.enabled": True,
    }
    args = ["train", str(REPO / "configs" / "quickstart.yaml"), "--run-dir", str(tmp_path / "run"), "--steps", "2"]
    args += ["--workers", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # a user's shell: no cluster, no settings
    log = (tmp_path / "train.log").open("w")
    run = subprocess.Popen(
        [sys.executable, "-m", "dml_dist", *args, *set_args(settings)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    root = psutil.Process(run.pid)
    seen: set[tuple[str, str]] = set()
    deadline = time.monotonic() + 540  # a whole local run: Ray's start is most of it
    while run.poll() is None and time.monotonic() < deadline:
        seen |= _listening(root)
        time.sleep(0.5)
    if run.poll() is None:
        run.kill()
    assert run.wait() == 0, (tmp_path / "train.log").read_text()[-3000:]
    names = {name for _, name in seen}
    assert "raylet" in names and any("DashboardAgent" in name for name in names), seen  # the instance was watched
    exposed = sorted(
        (address, name)
        for address, name in seen
        if not _is_loopback(address) and not name.startswith("ray::RayTrainWorker")  # torch's store: see above
    )
    assert exposed == [], exposed
