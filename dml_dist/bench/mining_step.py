"""``dml-dist bench mining-step``: the training step with the mining service on, over off, in one run.

The service selects the classes of step t + 1 while step t trains and the loader decodes them
ahead (``mining/client.py``), so mining should cost a training step nothing but the per-step
work that stays on the step's path: sending the step's class embeddings, taking the answer, and
the refresh pass every ``mining.refresh_every`` steps. This bench measures that end to end:
``dml-dist train CONFIG`` (Ray Train workers, as a user runs it) for ``steps`` steps, alternately
with ``mining.enabled`` false and true, ``rounds`` times each, the same seed and data. Mining is
made fully active early (warm-up and ramp of ``ramp`` steps each), and a run's step time is the
median of ``step_seconds`` (``metrics.jsonl``, every step logged) over the steps after
``2 * ramp``: mined batches only, evaluation excluded. The ratio is median(on) / median(off) of
the pooled steady-state steps; alternating the runs keeps a drifting machine load from favouring
one side. Target: at most 1.03.
"""

from __future__ import annotations

import statistics
from typing import Any

from dml_dist.bench.alternating import alternate_runs


def run_mining_step_bench(config_name: str, steps: int, rounds: int, ramp: int, overrides: list[str]) -> dict[str, Any]:
    if steps <= 2 * ramp + 10:
        raise ValueError(f"--steps: {steps} leaves fewer than 10 steady steps after 2 x --ramp ({ramp})")
    common = [f"train.steps={steps}", f"mining.warmup_steps={ramp}", f"mining.ramp_steps={ramp}", *overrides]
    sides = {"off": ["mining.enabled=false"], "on": ["mining.enabled=true"]}
    runs = alternate_runs(config_name, sides, common, rounds, after_step=2 * ramp)
    seconds = {side: [float(r["step_seconds"]) for rows in runs[side] for r in rows] for side in sides}
    medians = {
        side: [statistics.median(float(r["step_seconds"]) for r in rows) for rows in runs[side]] for side in sides
    }
    mined_on = [bool(r["mined"]) for rows in runs["on"] for r in rows]
    ratio = statistics.median(seconds["on"]) / statistics.median(seconds["off"])
    per_round = ", ".join(f"{on / off:.3f}" for on, off in zip(medians["on"], medians["off"], strict=True))
    print(
        f"step time, mining on / off: {ratio:.3f} (median of {len(seconds['on'])} and {len(seconds['off'])} "
        f"steady steps; per round: {per_round}; {sum(mined_on)} of {len(mined_on)} steady steps mined)"
    )
    return {
        "suite": "mining-step",
        "config": config_name,
        "steps": steps,
        "rounds": rounds,
        "median_step_seconds": {side: statistics.median(values) for side, values in seconds.items()},
        "per_round_medians": medians,
        "ratio_on_over_off": ratio,
        "mined_share_of_steady_steps_on": sum(mined_on) / max(len(mined_on), 1),
    }
