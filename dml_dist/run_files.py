"""The files of a run directory, written atomically so a reader never sees half a file.

``config.yaml`` (resolved config), ``metrics.jsonl`` (a JSON object per logged step),
``eval.json`` (held-out retrieval, untrained and latest), ``embedder.pt`` (model weights and
config, loadable with ``weights_only=True``), ``checkpoints/`` (Ray Train checkpoints: DeepSpeed
engine state of every rank and the mining state), ``placement.json`` (each rank's node and pid),
``resumes.jsonl`` (a JSON object per resume: the step resumed from), ``lease.json`` (the run
that holds the directory: ``train/run_lease.py``).

The two appended files (``APPENDED``) may end in a torn line when a node dies or the disk fills
mid-write: readers skip an incomplete last line (``read_jsonl``), and a resume cuts it off
(``drop_torn_tail``) before it appends again, so a torn line never ends up inside the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dml_dist.atomic import atomic_path, write_text_atomic

METRICS = "metrics.jsonl"
EVAL = "eval.json"
EMBEDDER = "embedder.pt"
CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
PLACEMENT = "placement.json"
RESUMES = "resumes.jsonl"
APPENDED = (METRICS, RESUMES)


RUN_METADATA_KEY = "dml_dist_run"
"""Key of the run's name in the Ray job's metadata (``ray list jobs``, the dashboard's Jobs view)."""


def run_name(run_dir: str | Path) -> str:
    """The run's one name: its directory's last component (a URI's query left out). Ray Train's
    run (``RunConfig.name``, the dashboard's Train view), the Prometheus ``run`` label, the
    ``train:`` line and a submitted job's metadata all carry it."""
    return str(run_dir).split("?")[0].rstrip("/").rsplit("/", 1)[-1]


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of an appended JSON-lines file, without a torn last line (one cut short by a
    crash mid-write). A bad line before the last raises ``ValueError`` naming the file and line:
    that is damage, not a torn write."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise ValueError(f"{path}: line {number} is not valid JSON ({err})") from err
    return rows


def drop_torn_tail(path: Path) -> bool:
    """Rewrite ``path`` without a torn last line; True when there was one."""
    if not path.is_file():
        return False
    rows = read_jsonl(path)
    whole = "".join(json.dumps(row) + "\n" for row in rows)
    if path.read_text() == whole:
        return False
    write_text_atomic(path, whole)
    return True


def truncate_metrics(path: Path, after_step: int) -> None:
    """Drop rows of steps after ``after_step`` (a resumed run logs them again), and a torn last line."""
    if not path.is_file():
        return
    rows = [row for row in read_jsonl(path) if row["step"] <= after_step]
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def save_embedder(path: Path, model: torch.nn.Module, config: dict[str, Any], step: int) -> None:
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"model": state, "config": config, "step": step}, tmp)


def load_embedder_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"run directory: {path} not found (has the run finished?)")
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state
