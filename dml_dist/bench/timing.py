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


def paired_medians(
    fn: Callable[[], object], baseline: Callable[[], object], repeats: int, budget_s: float = 10.0
) -> tuple[float, float, float]:
    """(median time of ``fn``, median time of ``baseline``, median of the per-repeat ratios).

    The two are timed back to back in each repeat, so a slow spell of a shared machine hits
    both and the ratio stays put where separate medians would drift apart.
    """
    fn_times, base_times, ratios = [], [], []
    fn(), baseline()
    started = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        baseline()
        t1 = time.perf_counter()
        fn()
        t2 = time.perf_counter()
        base_times.append(t1 - t0)
        fn_times.append(t2 - t1)
        ratios.append((t2 - t1) / max(t1 - t0, 1e-12))
        if time.perf_counter() - started > budget_s:
            break
    return statistics.median(fn_times), statistics.median(base_times), statistics.median(ratios)
