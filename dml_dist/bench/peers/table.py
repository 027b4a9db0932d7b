"""The ``bench peers`` table: each row's mean over seeds, its spread, and the overhead ratio."""

from __future__ import annotations

from typing import Any

import numpy as np

from dml_dist.bench.peers.plain_loop import RowResult


def summarize(name: str, results: list[RowResult]) -> dict[str, Any]:
    """A JSON row from ``name`` ("method | backbone") and its results, one per seed: Recall@1
    mean and spread (max - min) / 2, MAP@R and samples/s means."""
    r1 = np.array([r.report.recall[1] for r in results])
    rates = np.array([r.samples_per_second for r in results])
    method, _, backbone = name.partition(" | ")
    return {
        "name": method,
        "backbone": backbone,
        "recall_1": float(r1.mean()),
        "recall_1_spread": float((r1.max() - r1.min()) / 2),
        "recall_1_per_seed": r1.tolist(),
        "map_at_r": float(np.mean([r.report.map_at_r for r in results])),
        "samples_per_second": float(rates.mean()),
    }


def format_table(report: dict[str, Any]) -> str:
    """The markdown table of the report's rows, and the overhead ratio."""
    seeds = report["seeds"]
    spread = len(seeds) > 1
    lines = [
        f"bench peers: {report['config']}, {report['steps']} steps, batch {report['batch']}, "
        f"seed{'s' if spread else ''} {','.join(str(s) for s in seeds)}; held out: {report['data']['eval']}",
        "| method | backbone | R@1 | MAP@R | samples/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in report["rows"]:
        r1 = f"{row['recall_1']:.3f}" + (f" +- {row['recall_1_spread']:.3f}" if spread else "")
        lines.append(
            f"| {row['name']} | {row['backbone']} | {r1} | {row['map_at_r']:.3f} | {row['samples_per_second']:.0f} |"
        )
    lines.append(
        f"system overhead ratio (dml-dist samples/s / plain loop samples/s, same loss, backbone and "
        f"{report['workers']} cores): {report['overhead_ratio']:.2f}"
    )
    return "\n".join(lines)
