"""The files of a run directory, written atomically so a reader never sees half a file.

``config.yaml`` (resolved config), ``metrics.jsonl`` (a JSON object per logged step),
``eval.json`` (held-out retrieval, untrained and latest), ``embedder.pt`` (model weights and
config, loadable with ``weights_only=True``), ``checkpoints/`` (Ray Train checkpoints: DeepSpeed
engine state of every rank and the mining state), ``placement.json`` (each rank's node and pid).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

METRICS = "metrics.jsonl"
EVAL = "eval.json"
EMBEDDER = "embedder.pt"
CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
PLACEMENT = "placement.json"


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def truncate_metrics(path: Path, after_step: int) -> None:
    """Drop rows of steps after ``after_step`` (a resumed run logs them again)."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= after_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(row + "\n" for row in rows))
    os.replace(tmp, path)


def save_embedder(path: Path, model: torch.nn.Module, config: dict[str, Any], step: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    torch.save({"model": state, "config": config, "step": step}, tmp)
    os.replace(tmp, path)


def load_embedder_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"run directory: {path} not found (has the run finished?)")
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state
