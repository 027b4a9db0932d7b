"""The ``bench peers`` table: each row's mean over seeds, its spread, and the overhead ratio."""

from __future__ import annotations

from typing import Any

import numpy as np

from dml_dist.bench.peers.plain_loop import RowResult


def summarize(name: str, results: list[RowResult]) -> dict[str, Any]:
    """A JSON row from ``name`` ("method | backbone") and its results, one per seed: Recall@1
    mean and spread (max - min) / 2, MAP@R and samples/s means."""
    r1 = np.array([r.report.recall[1] for r in results])
    cross = [r.report.extra.get("cross_style_recall_1") for r in results]
    rates = np.array([r.samples_per_second for r in results])
    method, _, backbone = name.partition(" | ")
    return {
        "name": method,
        "backbone": backbone,
        "recall_1": float(r1.mean()),
        "recall_1_spread": float((r1.max() - r1.min()) / 2),
        "recall_1_per_seed": r1.tolist(),
        "map_at_r": float(np.mean([r.report.map_at_r for r in results])),
        **(_cross_style(np.array(cross)) if None not in cross else {}),
        "samples_per_second": float(rates.mean()),
    }


def _cross_style(recall: np.ndarray) -> dict[str, Any]:
    return {
        "cross_style_recall_1": float(recall.mean()),
        "cross_style_recall_1_spread": float((recall.max() - recall.min()) / 2),
        "cross_style_recall_1_per_seed": recall.tolist(),
    }


def format_table(report: dict[str, Any]) -> str:
    """The markdown table of the report's rows, and the overhead ratio."""
    seeds = report["seeds"]
    spread = len(seeds) > 1
    cross = all("cross_style_recall_1" in row for row in report["rows"])

    def mean(row: dict[str, Any], name: str) -> str:
        return f"{row[name]:.3f}" + (f" +- {row[name + '_spread']:.3f}" if spread else "")

    lines = [
        f"bench peers: {report['config']}, {report['steps']} steps, batch {report['batch']}, "
        f"seed{'s' if spread else ''} {','.join(str(s) for s in seeds)}; held out: {report['data']['eval']}",
        "| method | backbone | R@1 |" + (" cross-style R@1 |" if cross else "") + " MAP@R | samples/s |",
        "| --- | --- | --- |" + (" --- |" if cross else "") + " --- | --- |",
    ]
    for row in report["rows"]:
        cells = [row["name"], row["backbone"], mean(row, "recall_1")]
        cells += [mean(row, "cross_style_recall_1")] if cross else []
        cells += [f"{row['map_at_r']:.3f}", f"{row['samples_per_second']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        f"system overhead ratio (dml-dist samples/s / plain loop samples/s, same loss, backbone and "
        f"{report['workers']} cores): {report['overhead_ratio']:.2f}"
    )
    return "\n".join(lines)
