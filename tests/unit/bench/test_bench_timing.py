"""The benchmark's timing: interleaved repeats, paired ratios, and the loss table's rows."""

from __future__ import annotations

import math
import time

from dml_dist.bench.losses import VARIANTS, run_loss_bench
from dml_dist.bench.timing import interleaved_times, median_ratio


def test_paired_ratio_of_a_callable_twice_as_slow() -> None:
    times = interleaved_times({"fast": lambda: time.sleep(0.01), "slow": lambda: time.sleep(0.02)}, repeats=5)
    assert len(times["fast"]) == len(times["slow"]) == 5
    assert 1.3 < median_ratio(times, "slow", "fast") < 2.7


def test_a_callable_over_budget_is_timed_once_and_still_compared() -> None:
    times = interleaved_times({"quick": lambda: None, "slow": lambda: time.sleep(0.05)}, repeats=4, budget_s=0.02)
    assert len(times["slow"]) == 1 and len(times["quick"]) >= 1
    assert median_ratio(times, "quick", "slow") < 1


def test_loss_bench_has_a_row_per_variant_with_finite_ratios() -> None:
    report = run_loss_bench([16], repeats=1)
    assert [r["loss"] for r in report["rows"]] == [name for name, _, _ in VARIANTS]
    for row in report["rows"]:
        assert math.isfinite(row["ours_over_floor"]) and row["ours_over_floor"] > 0, row
        assert "ours_over_pml" not in row or row["ours_over_pml"] > 0, row
