"""Checks the driver makes before it starts anything that takes long: faiss is installed, and
the cluster can hold the workers the run asks for.

- ``check_faiss``: faiss comes from an extra (``dml-dist[cpu]`` or ``dml-dist[gpu]``: both
  provide the same ``faiss`` module, so neither can be a plain dependency). Without it a run
  would train for minutes and die at its first evaluation; this fails at once, in one line with
  the command to run.
- ``connect_ray``: joining a cluster (``--address``) whose token this client lacks makes Ray's
  C++ client log a warning a second for 20 s and then raise a bare ``ConnectionError``; this says
  which of the two it was, in one line.
- ``check_resources``: Ray Train places one bundle per worker (``resources_per_worker``: CPUs,
  and a GPU on GPU runs) and waits until the cluster holds them all, which on a cluster that
  can never hold them is forever. Compared with what the cluster has: a cluster without an
  autoscaler fails in one line naming the field and the fix; a cluster with one gets one warning
  (its autoscaler may add the nodes).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

FAISS_INSTALL = "pip install 'dml-dist[cpu]' (or 'dml-dist[gpu]' on a CUDA machine)"


def check_faiss() -> None:
    """Raise a one-line ``ValueError`` with the install command unless ``import faiss`` works."""
    try:
        import faiss  # noqa: F401
    except ImportError as err:
        raise ValueError(f"faiss is not installed ({err}); run: {FAISS_INSTALL}") from err


@dataclass(frozen=True)
class Demand:
    """What a run asks of the cluster: ``workers`` bundles of ``per_worker`` resources."""

    workers: int
    per_worker: dict[str, float]
    strict_spread: bool
    """``train.placement: STRICT_SPREAD``: every bundle on its own node."""


def shortfall(demand: Demand, nodes: list[dict[str, float]]) -> str | None:
    """Why ``nodes`` (each alive node's total resources) can never hold ``demand``; None when they can.

    Necessary conditions only (a bundle fits on some node, the sum fits the cluster, and with
    ``STRICT_SPREAD`` enough nodes hold one bundle each): what is in use now is not counted,
    since it frees up.
    """
    gpus = demand.per_worker.get("GPU", 0.0)
    cpus = demand.per_worker.get("CPU", 0.0)
    total_gpus = sum(n.get("GPU", 0.0) for n in nodes)
    total_cpus = sum(n.get("CPU", 0.0) for n in nodes)
    if gpus and total_gpus < gpus * demand.workers:
        return (
            f"train.use_gpu: the run asks for {demand.workers} workers x {gpus:g} GPU but the cluster has "
            f"{total_gpus:g} GPUs; set train.use_gpu: false (--set train.use_gpu=false) to train on CPUs, "
            "lower --workers, or join a cluster with GPUs (--address)"
        )
    fits = [n for n in nodes if n.get("CPU", 0.0) >= cpus and n.get("GPU", 0.0) >= gpus]
    if not fits:
        largest = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
        return (
            f"data.loader_workers: a worker needs {cpus:g} CPUs (1 + data.loader_workers) but the largest "
            f"node has {largest:g}; lower data.loader_workers"
        )
    if total_cpus < cpus * demand.workers:
        return (
            f"train.workers: {demand.workers} workers x {cpus:g} CPUs (1 + data.loader_workers) need "
            f"{cpus * demand.workers:g} CPUs but the cluster has {total_cpus:g}; lower --workers or data.loader_workers"
        )
    if demand.strict_spread and len(fits) < demand.workers:
        return (
            f"train.placement: STRICT_SPREAD puts each of the {demand.workers} workers on its own node but "
            f"{len(fits)} nodes can hold one; use PACK or SPREAD, or lower --workers"
        )
    return None


def check_resources(demand: Demand) -> None:
    """Compare ``demand`` with the cluster Ray is connected to: a ``ValueError`` naming the field
    when it can never be met and nothing autoscales, else one printed warning."""
    import ray

    nodes = [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
    problem = shortfall(demand, nodes)
    if problem is None:
        return
    if not cluster_autoscales():
        raise ValueError(problem)
    print(f"train: warning: {problem} (now; waiting for the cluster's autoscaler to add nodes)", flush=True)


def cluster_autoscales() -> bool:
    """True when an autoscaler can add nodes to the connected cluster.

    Autoscaler v2 (KubeRay) says so in the GCS; v1's monitor runs on every head, but without an
    autoscaling config it drives a read-only provider whose node types are the nodes themselves
    (``node_<id>``), so only a mapping to other names shows real node types.
    """
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    if is_autoscaler_v2():
        return True
    raw = _internal_kv_get("__autoscaling_status")
    if not raw:
        return False
    report: dict[str, Any] = json.loads(raw).get("autoscaler_report") or {}
    mapping: dict[str, str] = report.get("node_type_mapping") or {}
    return any(node_type != f"node_{node_id}" for node_id, node_type in mapping.items())


def connect_ray(address: str, **init_kwargs: Any) -> None:
    """``ray.init(address=address, ...)``; a refused token or an unreachable cluster is one
    ``ValueError`` line. What Ray writes to the process's stderr while it connects (its C++
    client writes there directly) is held back, and shown only when the connection succeeds."""
    import ray

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            ray.init(address=address, **init_kwargs)
            failure: BaseException | None = None
        except (ConnectionError, ray.exceptions.AuthenticationError) as err:
            failure = err
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        written = held.read().decode(errors="replace")
    if failure is None:
        sys.stderr.write(written)
        return
    if "InvalidAuthToken" in written or isinstance(failure, ray.exceptions.AuthenticationError):
        raise ValueError(
            f"--address {address}: the Ray cluster refused this client's authentication token; set "
            "RAY_AUTH_TOKEN (or ~/.ray/auth_token) to the head's token (`ray get-auth-token` on the head)"
        ) from failure
    raise ValueError(f"--address {address}: cannot connect to a Ray cluster there ({failure})") from failure
