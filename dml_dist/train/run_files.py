"""The files of a run directory, written atomically so a reader never sees half a file.

``config.yaml`` (resolved config), ``metrics.jsonl`` (a JSON object per logged step),
``eval.json`` (held-out retrieval, untrained and latest), ``embedder.pt`` (model weights and
config, loadable with ``weights_only=True``), ``checkpoints/`` (Ray Train checkpoints: DeepSpeed
engine state of every rank and the mining state), ``placement.json`` (each rank's node and pid),
``resumes.jsonl`` (a JSON object per resume: the step resumed from).
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


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def truncate_metrics(path: Path, after_step: int) -> None:
    """Drop rows of steps after ``after_step`` (a resumed run logs them again)."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= after_step]
    write_text_atomic(path, "".join(row + "\n" for row in rows))


def save_embedder(path: Path, model: torch.nn.Module, config: dict[str, Any], step: int) -> None:
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"model": state, "config": config, "step": step}, tmp)


def load_embedder_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"run directory: {path} not found (has the run finished?)")
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state
