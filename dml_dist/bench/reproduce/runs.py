"""One training run per row of ``bench reproduce``, and a group's rows in order.

A row is a JSON-ready dict (it is saved as ``RUN_DIR/reproduce_row.json`` and in
``results.json``): name, batch, steps, Recall@K (string keys, as in ``eval.json``), MAP@R, NMI,
the Recall@1 history, steps to 95% of the final Recall@1, and the seconds the run took.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dml_dist.bench.omniglot import prepare_omniglot
from dml_dist.bench.reproduce.recipes import RECIPES, Scale, common_overrides, recipe_overrides, slug
from dml_dist.bench.reproduce.report import steps_to_fraction
from dml_dist.config.loader import load_config
from dml_dist.eval.result import EvalResult, recall_to_json

ROW_FILE = "reproduce_row.json"


def run_one(config_path: str | Path, overrides: list[str], run_dir: Path, label: str) -> dict[str, Any]:
    """Train one recipe and return its row (final metrics and the Recall@1 curve).

    A run directory that already finished this exact config is reused, so an interrupted
    reproduction continues where it stopped.
    """
    from dml_dist import run_files
    from dml_dist.config.loader import config_to_dict
    from dml_dist.train.launcher import run_training

    config = load_config(config_path, overrides)
    finished = finished_row(run_dir, label, config_to_dict(config))
    if finished is not None:
        print(f"reproduce: {label}: reusing the finished run in {run_dir}", flush=True)
        return finished
    started = time.perf_counter()
    run_training(config, run_dir, resume="auto")  # an interrupted run of this config continues
    result = EvalResult.read(run_dir / run_files.EVAL)  # the history is in the run's eval.json
    row = row_from_eval(result, label, config.batch.num_classes, config.batch.images_per_class, config.train.steps)
    row["seconds"] = time.perf_counter() - started
    row["run_dir"] = str(run_dir)
    (run_dir / ROW_FILE).write_text(json.dumps(row, indent=1))
    return row


def row_from_eval(result: EvalResult, label: str, num_classes: int, k: int, steps: int) -> dict[str, Any]:
    """A table row from a run's evaluation record (``eval.json``)."""
    history = [(point.step, point.recall[1]) for point in result.history]
    return {
        "name": label,
        "batch": f"{num_classes} x {k}",
        "steps": steps,
        "recall": recall_to_json(result.recall),
        "map_at_r": result.metrics.map_at_r,
        "nmi": result.metrics.nmi,
        "history": history,
        "steps_to_95": steps_to_fraction(history, 0.95),
        "seconds": None,
    }


def finished_row(run_dir: Path, label: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """The row of a run directory that finished ``config`` (same resolved config), else None."""
    import yaml

    from dml_dist import run_files

    paths = [run_dir / run_files.CONFIG, run_dir / run_files.EVAL, run_dir / run_files.EMBEDDER]
    if not all(p.is_file() for p in paths) or yaml.safe_load(paths[0].read_text()) != json.loads(json.dumps(config)):
        return None
    result = EvalResult.read(paths[1])
    if result.step != config["train"]["steps"]:
        return None
    saved = run_dir / ROW_FILE
    if saved.is_file():
        row: dict[str, Any] = json.loads(saved.read_text())
        row["name"] = label
        return row
    batch = config["batch"]
    row = row_from_eval(result, label, batch["num_classes"], batch["images_per_class"], config["train"]["steps"])
    row["run_dir"] = str(run_dir)
    return row


def run_group(
    group: str,
    scale: Scale,
    runs: Path,
    cache: Path,
    omniglot: Path | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train every row of a group; ``on_row`` sees the partial group after each run.
    ``omniglot``: the Omniglot zip (the ``omniglot`` group needs it)."""
    rows: list[dict[str, Any]] = _ReportingList(group, on_row)
    if group == "omniglot":
        if omniglot is None:
            raise ValueError("reproduce: the omniglot group needs --omniglot PATH")
        train, evaluation = prepare_omniglot(omniglot, cache)
        # The settings of configs/omniglot.yaml before its tuned recipe, which the paper losses'
        # table in docs/results/results.md was measured with (every recipe sets its own loss).
        base = [f"data.train_shards={train}", f"data.eval_shards={evaluation}", "data.augment=none", "engine.lr=0.002"]
        for recipe in RECIPES:
            overrides = [*base, *common_overrides(scale.omniglot_steps, scale.eval_every)]
            overrides += recipe_overrides(recipe, scale.omniglot_n)
            rows.append(run_one("omniglot", overrides, runs / group / slug(recipe.name), recipe.name))
    elif group == "losses":
        for recipe in RECIPES:
            overrides = [
                *common_overrides(scale.procedural_steps, scale.eval_every),
                *recipe_overrides(recipe, scale.procedural_n),
            ]
            rows.append(run_one("quickstart", overrides, runs / group / slug(recipe.name), recipe.name))
    else:
        for n in scale.n_sweep:
            overrides = [*common_overrides(scale.n_sweep_steps, scale.eval_every), *recipe_overrides(RECIPES[0], n)]
            rows.append(run_one("quickstart", overrides, runs / group / f"n{n}", f"N-pair-mc, N={n}"))
    return {"group": group, "rows": list(rows)}


class _ReportingList(list):  # type: ignore[type-arg]
    """A list of rows that reports the partial group after each append (a long group keeps its rows)."""

    def __init__(self, group: str, on_row: Callable[[dict[str, Any]], None] | None):
        super().__init__()
        self.group, self.on_row = group, on_row

    def append(self, row: Any) -> None:
        super().append(row)
        if self.on_row is not None:
            self.on_row({"group": self.group, "rows": list(self), "partial": True})
