"""``dml-dist bench memory-step``: a small global batch with cross-batch memory against a large
global batch without, in training throughput, in one run.

The question of issue 16: N = 64 classes x 2 images with a memory of M = 4,096 rows gives each
anchor about as many negatives as N = 1,000 x 2 without memory; what does each cost per step and
per sample? Both sides run ``dml-dist train CONFIG`` (``bench/alternating.py``: Ray Train
workers, alternated rounds); the memory side starts writing at step 0, and its figures are taken
after the memory is full (``M / 2N`` steps) plus ``settle`` steps. Reported per side: median
``samples_per_second`` and ``step_seconds`` of the steady steps (both sides train ``loss``, one that
takes memory, multi-similarity unless told), pooled over rounds, and the ratio
memory / batch of samples/s. Held-out Recall@1 of the two settings is in ``docs/results/memory.md``
(training runs of 300 steps, 3 seeds); this bench measures speed only.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from dml_dist.bench.alternating import alternate_runs


def run_memory_step_bench(
    config_name: str,
    steps: int,
    rounds: int,
    small_n: int,
    memory_size: int,
    large_n: int,
    overrides: list[str],
    loss: str = "multi_similarity",
    settle: int = 5,
) -> dict[str, Any]:
    """Time ``small_n`` classes + memory of ``memory_size`` rows against ``large_n`` classes (see module doc)."""
    fill_steps = math.ceil(memory_size / (2 * small_n))
    if steps <= fill_steps + settle + 5:
        raise ValueError(
            f"--steps: {steps} leaves fewer than 5 steady steps after the memory fills ({fill_steps} steps) "
            f"and settles ({settle})"
        )
    sides = {
        "batch": [f"batch.num_classes={large_n}", "memory.size=0"],
        "memory": [f"batch.num_classes={small_n}", f"memory.size={memory_size}", "memory.start_step=0"],
    }
    common = [f"train.steps={steps}", "batch.images_per_class=2", f"loss={{name: {loss}}}", *overrides]
    runs = alternate_runs(config_name, sides, common, rounds, after_step=fill_steps + settle)
    figures: dict[str, dict[str, float]] = {}
    for side in sides:
        rows = [r for round_rows in runs[side] for r in round_rows]
        figures[side] = {
            "samples_per_second": statistics.median(float(r["samples_per_second"]) for r in rows),
            "step_seconds": statistics.median(float(r["step_seconds"]) for r in rows),
            "steady_steps": float(len(rows)),
        }
        print(
            f"{side:<7} ({' '.join(sides[side])}): median {figures[side]['samples_per_second']:.0f} samples/s, "
            f"{figures[side]['step_seconds']:.4f} s/step over {len(rows)} steady steps"
        )
    ratio = figures["memory"]["samples_per_second"] / figures["batch"]["samples_per_second"]
    print(f"samples/s, N = {small_n} + memory {memory_size} over N = {large_n}: {ratio:.3f}")
    return {
        "suite": "memory-step",
        "config": config_name,
        "steps": steps,
        "rounds": rounds,
        "loss": loss,
        "sides": sides,
        "figures": figures,
        "samples_per_second_memory_over_batch": ratio,
    }
