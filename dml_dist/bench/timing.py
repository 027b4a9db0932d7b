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


def interleaved_times(
    fns: dict[str, Callable[[], object]], repeats: int, budget_s: float = 10.0
) -> dict[str, list[float]]:
    """Wall times of each callable, all called in turn within each repeat after one warm-up call
    each, so that a slow spell of a shared machine hits all of them alike and their per-repeat
    ratios stay put. A callable whose warm-up alone exceeds ``budget_s`` keeps that one time and
    sits out the repeats; the repeats stop early once they have taken ``budget_s``."""
    times: dict[str, list[float]] = {}
    for name, fn in fns.items():
        started = time.perf_counter()
        fn()
        times[name] = [time.perf_counter() - started]
    repeated = [name for name in fns if times[name][0] <= budget_s]
    for name in repeated:
        times[name] = []
    started = time.perf_counter()
    for _ in range(repeats if repeated else 0):
        for name in repeated:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
        if time.perf_counter() - started > budget_s:
            break
    return times


def median_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median of the per-repeat ratios when both were repeated together, else of the medians."""
    a, b = times[numerator], times[denominator]
    if len(a) == len(b):
        return statistics.median(x / max(y, 1e-12) for x, y in zip(a, b, strict=True))
    return statistics.median(a) / max(statistics.median(b), 1e-12)
