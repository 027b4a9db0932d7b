"""Where a run lives when its workers may sit on any node: the storage, and a check that every node sees it.

A run has one *storage*: a directory on a file system that every node mounts (NFS, EFS, a
Kubernetes ReadWriteMany volume), or a URI that Ray Train's storage accepts (``s3://``,
``gs://``: anything ``pyarrow.fs`` opens; ``node_copies.py`` says how files reach it). It comes
from ``--storage``, else ``train.storage``, else the ``DML_DIST_STORAGE`` environment variable;
without any, the run stays on the driver's disk as on one machine (``runs/NAME`` and
``data/cache`` under the working directory).

With a storage ``S``:
- the run directory defaults to ``S/runs/NAME``, and a relative ``--run-dir`` is taken inside ``S``;
- generated data (the procedural set) goes to ``S/data`` unless ``data.cache_dir`` is set (with a
  URI storage it is generated on the driver's disk and uploaded to ``S/data``);
- Ray Train's ``storage_path`` is the run directory, so checkpoints land in ``RUN/checkpoints``.

Every file a worker reads or writes is then in ``S`` or in node-local scratch it creates itself
(``tempfile``). ``check_nodes_see`` proves it before training: the driver writes a probe file
with a random token, and one task pinned to each alive node reads it back and writes its own, so
a path that one node cannot see (or a URI its credentials cannot reach) fails in one line naming
the path and the node, before any worker starts. The nodes probe in parallel under one deadline
(``PROBE_TIMEOUT_S``); a node that does not answer in time (a hung mount) is named the same way.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dml_dist import storage as locations
from dml_dist.config import DataConfig, ExperimentConfig
from dml_dist.config.credentials import refuse_credentials
from dml_dist.config.loader import replaced

STORAGE_ENV = "DML_DIST_STORAGE"
PROBE_TIMEOUT_S = 120.0
"""How long the nodes, probing all at once, have to answer ``check_nodes_see``."""
PROBE_DIR = ".dml-dist-probe"


def resolve_storage(flag: str | None, config: ExperimentConfig) -> str | None:
    """The run's storage (flag, then ``train.storage``, then ``DML_DIST_STORAGE``): an absolute
    directory or a URI that ``pyarrow.fs`` opens (checked here, naming ``storage``), or None."""
    value = flag or config.train.storage or os.environ.get(STORAGE_ENV)
    if not value:
        return None
    refuse_credentials(value, "--storage" if flag else "train.storage" if config.train.storage else STORAGE_ENV)
    local = locations.local_path(value)
    if local is None:
        locations.filesystem(value)  # a URI that pyarrow cannot open fails here, naming ``storage``
        return value
    return str(local.expanduser().absolute())


def resolve_run_dir(run_dir: str | None, config_name: str, storage: str | None) -> Path | str:
    """``--run-dir`` (inside the storage when relative), else ``STORAGE/runs/NAME`` or ``runs/NAME``.

    A URI (given, or inside a URI storage) is returned as a string: ``Path`` would fold its ``//``.
    """
    refuse_credentials(run_dir, "--run-dir")
    chosen = locations.local_path(run_dir) if run_dir else Path("runs") / config_name
    if chosen is None:  # a URI
        return str(run_dir)
    if storage is not None and not chosen.is_absolute():
        inside = locations.join(storage, chosen.as_posix())
        return inside.absolute() if isinstance(inside, Path) else inside
    return chosen.absolute()


def place_data(data: DataConfig, storage: str | None) -> DataConfig:
    """Generated data goes to ``STORAGE/data`` when the cache directory is left at its default.

    With a URI storage the data is generated on the driver's disk; the launcher uploads it.
    """
    if storage is not None and locations.is_local(storage) and data.cache_dir == DataConfig().cache_dir:
        return replaced(data, {"cache_dir": str(Path(storage) / "data")})
    return data


def anchor_relative_paths(config: ExperimentConfig) -> ExperimentConfig:
    """A copy of ``config`` whose relative local paths of data and weights are made absolute as
    this process sees them.

    Ray Train's workers run in the session's artifact directory and ``dml-dist tune``'s trials in
    their own, where ``data/cache/symbols/train`` or ``model.init_from: runs/pretrain`` would name
    nothing. Called by the driver (``run_training``, and ``dml-dist tune`` before its trials).
    URIs and absolute paths are left as they are.
    """

    def absolute(value: str | None) -> str | None:
        local = locations.local_path(value) if value else None
        return value if local is None or local.is_absolute() else str(local.expanduser().absolute())

    data, model = config.data, config.model
    changes: dict[str, Any] = {
        "data.train_shards": absolute(data.train_shards),
        "data.eval_shards": absolute(data.eval_shards),
        "data.cache_dir": absolute(data.cache_dir) or data.cache_dir,
        "model.init_from": absolute(model.init_from),
    }
    if isinstance(model.pretrained, str) and not model.pretrained.startswith("hf-hub:"):
        changes["model.pretrained"] = absolute(model.pretrained)
    return replaced(config, changes)


@dataclass(frozen=True)
class SharedPath:
    """A path that every node must see: ``what`` names it in errors (a flag or a config field)."""

    what: str
    path: str
    writable: bool


def check_nodes_see(paths: list[SharedPath]) -> list[str]:
    """Fail with one line if an alive Ray node cannot read (or write) one of ``paths``.

    Writable paths get a probe file from the driver, which every node must read back; readable
    paths must exist on every node. Returns the ids of the nodes checked.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    tokens: dict[str, str] = {}
    for shared in paths:
        if shared.writable:
            tokens[shared.path] = _write_probe(shared.path, "driver")
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe_on_node)
    pending = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            paths, tokens, n["NodeID"]
        )
        for n in nodes
    ]
    # Every node probes at once, under one deadline: a hung mount costs PROBE_TIMEOUT_S, not that per node.
    ready, _ = ray.wait(pending, num_returns=len(pending), timeout=PROBE_TIMEOUT_S)
    for node, ref in zip(nodes, pending, strict=True):
        where = f"node {node['NodeID'][:12]} ({node.get('NodeManagerAddress', '?')})"
        if ref not in ready:
            what = ", ".join(f"{p.what} {p.path}" for p in paths)
            raise ValueError(
                f"{what}: {where} did not answer the storage probe within {PROBE_TIMEOUT_S:g} s (a hung mount?)"
            )
        try:
            problem = ray.get(ref)
        except Exception as err:  # the node died or its task failed: one line, not a traceback
            raise ValueError(
                f"storage probe on {where} failed: {type(err).__name__}: {str(err).splitlines()[0]}"
            ) from err
        if problem is not None:
            raise ValueError(f"{problem} on {where}; every node must mount it")
    return [n["NodeID"] for n in nodes]


def _write_probe(directory: str, writer: str) -> str:
    token = uuid.uuid4().hex
    _write(directory, f"{writer}-{token}", token)
    return token


def _write(directory: str, name: str, text: str) -> None:
    """Write ``directory/PROBE_DIR/name`` (an absolute directory or a URI: ``pyarrow.fs`` opens both)."""
    locations.write_bytes(locations.join(directory, PROBE_DIR, name), text.encode())


def _read(directory: str, name: str) -> str:
    return locations.read_bytes(locations.join(directory, PROBE_DIR, name)).decode()


def _exists(path: str) -> bool:
    return locations.exists(path)


def _probe_on_node(paths: list[SharedPath], tokens: dict[str, str], node_id: str) -> str | None:
    """Runs on one node: None when every path is visible there, else what is wrong (one phrase)."""
    for shared in paths:
        path = shared.path
        try:
            if not shared.writable:
                if not _exists(path):
                    return f"{shared.what}: {path} does not exist"
                continue
        except (OSError, ValueError) as err:
            return f"{shared.what}: {path} cannot be read ({err})"
        try:
            seen = _read(path, f"driver-{tokens[shared.path]}")
        except (OSError, ValueError):
            return f"{shared.what}: {path} is not the driver's {path} (the driver's probe file is not there)"
        if seen != tokens[shared.path]:
            return f"{shared.what}: {path} holds another probe than the driver wrote"
        try:
            _write(path, f"node-{node_id[:12]}", seen)
        except (OSError, ValueError) as err:
            return f"{shared.what}: {path} is not writable ({getattr(err, 'strerror', None) or err})"
    return None


def node_info(node_id: str) -> dict[str, Any]:
    """Where this worker runs: Ray node id (``train/worker_parts.py`` asks Ray), host name and
    process id (printed and reported)."""
    import socket

    return {"node_id": node_id, "host": socket.gethostname(), "pid": os.getpid()}
