"""Median wall time of a callable, after one warm-up call, within a time budget."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], repeats: int, budget_s: float = 10.0) -> float:
    """Median of up to ``repeats`` timed calls after a warm-up call.

    A callable whose warm-up alone exceeds ``budget_s`` (a reference with an N^3 mask, say) is
    reported by that single call; otherwise the repeats are cut to fit the budget (at least one).
    """
    started = time.perf_counter()
    fn()
    first = time.perf_counter() - started
    if first > budget_s:
        return first
    times = []
    for _ in range(max(1, min(repeats, int(budget_s / max(first, 1e-9))))):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)
