"""Training curves as a PNG in the run directory: loss, held-out Recall@1 and samples/s
against step, read from ``metrics.jsonl`` and ``eval.json``."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: write files only

import matplotlib.pyplot as plt  # noqa: E402

from dml_dist.eval.result import EvalResult  # noqa: E402

CURVES = "curves.png"


def write_training_curves(run_dir: str | Path) -> Path:
    """Write ``curves.png`` (three panels) and return its path."""
    run_dir = Path(run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    history = EvalResult.read(run_dir / "eval.json").history if (run_dir / "eval.json").is_file() else []
    steps = [r["step"] for r in rows]
    figure, (loss_ax, recall_ax, speed_ax) = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    loss_ax.plot(steps, [r["loss"] for r in rows], color="tab:red")
    loss_ax.set(title="training loss", xlabel="step", ylabel="loss")
    recall_ax.plot([h.step for h in history], [h.recall[1] for h in history], marker="o", color="tab:blue")
    recall_ax.set(title="held-out Recall@1", xlabel="step", ylabel="Recall@1", ylim=(0, 1))
    speed_ax.plot(steps, [r["samples_per_second"] for r in rows], color="tab:green")
    speed_ax.set(title="throughput", xlabel="step", ylabel="samples / s", ylim=(0, None))
    for ax in (loss_ax, recall_ax, speed_ax):
        ax.grid(alpha=0.3)
    figure.suptitle(run_dir.name)
    path = run_dir / CURVES
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
