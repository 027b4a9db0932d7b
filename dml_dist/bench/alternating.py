"""Alternated training runs: the step benches' way of comparing two settings in one command.

``dml-dist train CONFIG`` (Ray Train workers, as a user runs it) runs once per side and round,
sides alternated within each round so that a drifting machine load favours neither. Every step
is logged (``train.log_every = 1``); evaluation and checkpoints are off, so a step's figures
(``step_seconds``, ``samples_per_second`` in ``metrics.jsonl``) are the training step's alone.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def steady_rows(metrics_jsonl: Path, after_step: int) -> list[dict[str, Any]]:
    """The ``metrics.jsonl`` rows of the steps after ``after_step``."""
    rows = [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] > after_step]


def alternate_runs(
    config_name: str, sides: dict[str, list[str]], common: list[str], rounds: int, after_step: int
) -> dict[str, list[list[dict[str, Any]]]]:
    """Train every side ``rounds`` times, alternated; per side, per round, the steady rows.

    ``sides`` maps a side's name to its ``--set`` overrides, applied after ``common``.
    """
    from dml_dist.config.loader import load_config
    from dml_dist.observability.logging import local_ray_env
    from dml_dist.train.launcher import run_training

    for key, value in local_ray_env().items():
        os.environ.setdefault(key, value)
    fixed = ["train.log_every=1", "train.eval_every=0", "train.checkpoint_every=0"]
    rows: dict[str, list[list[dict[str, Any]]]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="dml-bench-alternating-") as scratch:
        for round_index in range(rounds):
            for side, overrides in sides.items():
                config = load_config(config_name, [*common, *fixed, *overrides])
                run_dir = Path(scratch) / f"{side}-{round_index}"
                run_training(config, run_dir)
                rows[side].append(steady_rows(run_dir / "metrics.jsonl", after_step))
                print(f"round {round_index + 1}/{rounds} {side}: {len(rows[side][-1])} steady steps", flush=True)
    return rows
