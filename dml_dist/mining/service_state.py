"""The mining service's state file: everything a restored service needs to answer as before.

One ``.npz`` written atomically through ``ClassBank.save``: the bank (embeddings, refresh
steps, momentum), the queued publishes (steps, sizes, concatenated ``bank_pos`` and rows), the
kept answers (``MiningAnswer.to_dict`` as JSON), the graphs in use and next (neighbour lists,
build time and method; running builds are waited for first), the partition epoch (visited
classes, the dealt batches and the cursor: ``PartitionSampler.state_dict``), the diagnostics
window (``DiagnosticsWindow.state_dict``) and the counters. A service restored
from the file at a step boundary answers as the uninterrupted one does
(``tests/unit/mining/test_mining.py``). A bank-only file of an older version restores too, with an
empty queue, no kept answers and no graphs. ``state_bytes``/``restore_bytes`` carry the same
file through Ray, so a checkpoint taken on another node never needs a path on the actor's node.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dml_dist.mining.answer import MiningAnswer
from dml_dist.mining.bank import ClassBank
from dml_dist.mining.diagnostics import DiagnosticsWindow
from dml_dist.mining.graph import KnnGraph
from dml_dist.mining.graph_schedule import GraphSchedule
from dml_dist.mining.partition import PartitionSampler


class ServiceParts(Protocol):
    """What the state file holds of a ``mining.service.MiningService`` (a protocol, so that this
    module does not import the service that imports it)."""

    bank: ClassBank
    graph_schedule: GraphSchedule
    partition: PartitionSampler
    diagnostics: DiagnosticsWindow
    queue: list[tuple[int, np.ndarray, np.ndarray]]  # (step, class ids [n], embeddings [n, D])
    answers: dict[int, MiningAnswer]
    latest_step: int
    applied_step: int
    num_selections: int


def save_state(service: ServiceParts, target: Path) -> None:
    """Write ``service``'s whole state to ``target`` atomically (see the module docstring)."""
    service.graph_schedule.wait()
    queue = service.queue
    graphs = service.graph_schedule.graphs
    dim = service.bank.embeddings.shape[1]
    arrays: dict[str, Any] = {
        "latest_step": service.latest_step,
        "applied_step": service.applied_step,
        "num_selections": service.num_selections,
        "last_boundary": service.graph_schedule.last_boundary,
        "queue_steps": np.asarray([s for s, _, _ in queue], dtype=np.int64),
        "queue_sizes": np.asarray([ids.size for _, ids, _ in queue], dtype=np.int64),
        "queue_ids": _concat([ids for _, ids, _ in queue], (0,), np.int64),
        "queue_emb": _concat([emb for _, _, emb in queue], (0, dim), np.float32),
        "answer_steps": np.asarray(sorted(service.answers), dtype=np.int64),
        "answers_json": np.asarray(json.dumps([service.answers[s].to_dict() for s in sorted(service.answers)])),
        "graph_steps": np.asarray(sorted(graphs), dtype=np.int64),
        **service.partition.state_dict(),
        **service.diagnostics.state_dict(),
    }
    for s in sorted(graphs):
        graph = graphs[s]
        arrays[f"graph_{s}"] = graph.neighbours.astype(np.int32)
        arrays[f"graph_{s}_meta"] = np.asarray(
            json.dumps({"build_seconds": graph.build_seconds, "method": graph.method})
        )
    service.bank.save(target, **arrays)


def restore_state(service: ServiceParts, path: str) -> int:
    """Load ``save_state``'s file into ``service``; returns the step restored to (the newest publish)."""
    extra = service.bank.load(path)
    service.latest_step = int(extra.get("latest_step", int(service.bank.last_step.max())))
    service.applied_step = int(extra.get("applied_step", service.latest_step))
    service.num_selections = int(extra.get("num_selections", 0))
    service.queue = []
    if "queue_steps" in extra:
        offsets = np.concatenate([[0], np.cumsum(extra["queue_sizes"])])
        for i, s in enumerate(extra["queue_steps"].tolist()):
            lo, hi = offsets[i], offsets[i + 1]
            service.queue.append((int(s), extra["queue_ids"][lo:hi].copy(), extra["queue_emb"][lo:hi].copy()))
    service.answers = {}
    if "answers_json" in extra:
        saved = json.loads(str(extra["answers_json"]))
        for s, answer in zip(extra["answer_steps"].tolist(), saved, strict=True):
            service.answers[int(s)] = MiningAnswer.from_dict(answer)
    graphs: dict[int, KnnGraph] = {}
    for s in extra["graph_steps"].tolist() if "graph_steps" in extra else []:
        meta = json.loads(str(extra[f"graph_{s}_meta"]))
        neighbours = extra[f"graph_{s}"].astype(np.int64)
        graphs[int(s)] = KnnGraph(neighbours, int(s), float(meta["build_seconds"]), str(meta["method"]))
    service.graph_schedule.replace(graphs, int(extra.get("last_boundary", -1)))
    service.partition.load_state_dict(extra)
    service.diagnostics.load_state_dict(extra)
    return service.latest_step


def state_bytes(service: ServiceParts) -> bytes:
    """``save_state``'s file as bytes."""
    with tempfile.TemporaryDirectory(prefix="dml-dist-mining-") as scratch:
        path = Path(scratch) / "state.npz"
        save_state(service, path)
        return path.read_bytes()


def restore_bytes(service: ServiceParts, data: bytes) -> int:
    """Load the bytes ``state_bytes`` returned; returns the step restored to."""
    with tempfile.TemporaryDirectory(prefix="dml-dist-mining-") as scratch:
        path = Path(scratch) / "state.npz"
        path.write_bytes(data)
        return restore_state(service, str(path))


def _concat(parts: list[np.ndarray], empty_shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty_shape, dtype=dtype)
