"""The ``bench reproduce`` plots: Recall@1 curves per group, and the N sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: write files only

import matplotlib.pyplot as plt  # noqa: E402


def write_plots(results: list[dict[str, Any]], out: Path) -> list[Path]:
    """``recall_curves_<group>.png`` for every group, and ``n_sweep.png`` for the ``n`` group."""
    paths = []
    for group in results:
        figure, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
        for row in group["rows"]:
            steps, r1 = zip(*row["history"], strict=True) if row["history"] else ((), ())
            ax.plot(steps, r1, marker="o", markersize=3, label=f"{row['name']} ({row['batch']})")
        ax.set(xlabel="step", ylabel="held-out Recall@1", title=f"{group['group']}: Recall@1 on unseen classes")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        path = out / f"recall_curves_{group['group']}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        paths.append(path)
        if group["group"] == "n":
            paths.append(_n_sweep(group["rows"], out / "n_sweep.png"))
    return paths


def _n_sweep(rows: list[dict[str, Any]], path: Path) -> Path:
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    ns = [int(r["name"].rpartition("=")[2]) for r in rows]
    left.plot(ns, [r["recall"]["1"] for r in rows], marker="o")
    left.set(xscale="log", xlabel="N (classes per batch)", ylabel="final Recall@1", title="Recall@1 vs N")
    right.plot(ns, [r["steps_to_95"] for r in rows], marker="o", color="tab:orange")
    right.set(xscale="log", xlabel="N", ylabel="steps", title="steps to 95% of final Recall@1")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
