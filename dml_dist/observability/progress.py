"""Progress a user can see: tqdm bars (counts, rates, ETA) and the training step line.

``progress_bar`` is tqdm on the driver and Ray's ``tqdm_ray`` inside a Ray worker or actor (a
worker's own tqdm would write carriage-return frames into the driver's log stream; ``tqdm_ray``
sends its state to the driver, which draws the bar). Bars go to stderr, so stdout stays the
lines a script reads. ``TQDM_DISABLE=1`` (``dml-dist -q``) turns every bar off.

``format_step_line`` is the line the training loop prints every ``train.log_every`` steps, with
the run's ETA estimated from the mean step time so far (the first steps, which build kernels and
warm caches, weigh less as the run goes on).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import tqdm


def bars_disabled() -> bool:
    return os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")


def in_ray_worker() -> bool:
    """True inside a Ray task or actor (where ``tqdm_ray`` must draw the bar), false on a driver."""
    try:
        import ray
    except ImportError:
        return False
    if not ray.is_initialized():
        return False
    return bool(ray._private.worker.global_worker.mode == ray.WORKER_MODE)


class _StderrBar(tqdm):  # type: ignore[type-arg]
    """tqdm whose ``write`` (a message printed above the bar) goes to stderr, like the bar."""

    @classmethod
    def write(cls, s: str, file: Any = None, end: str = "\n", nolock: bool = False) -> None:
        super().write(s, file=file or sys.stderr, end=end, nolock=nolock)


class _NoBar:
    """A bar that shows nothing (``TQDM_DISABLE``), with the methods callers use."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def write(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(total: int | None, desc: str, unit: str = "img") -> Any:
    """A progress bar with ``update(n)``, ``close()``, ``write(text)`` and ``with`` support."""
    if bars_disabled():
        return _NoBar()
    if in_ray_worker():
        from ray.experimental.tqdm_ray import tqdm as tqdm_ray

        return _RayBar(tqdm_ray(total=total, desc=desc, unit=unit))
    return _StderrBar(total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=0.5)


class _RayBar:
    """``tqdm_ray`` with ``write`` and ``with`` support (it has neither)."""

    def __init__(self, bar: Any):
        self.bar = bar

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()

    def write(self, text: str) -> None:
        _NoBar().write(text)

    def __enter__(self) -> _RayBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``: short enough for a step line."""
    if seconds != seconds:  # NaN: no pace measured yet
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def eta_seconds(step: int, steps: int, elapsed_seconds: float, start_step: int = 0) -> float:
    """Time left at ``step`` of ``steps`` at the mean pace since ``start_step``:
    elapsed / (step - start_step) * (steps - step)."""
    if step <= start_step:
        return float("nan")
    return elapsed_seconds / (step - start_step) * max(0, steps - step)


def format_step_line(
    step: int,
    steps: int,
    loss: float,
    samples_per_second: float,
    step_seconds: float,
    elapsed_seconds: float,
    mined: bool | None = None,
    start_step: int = 0,
    lr: float | None = None,
    workers: int = 1,
) -> str:
    """One training line, e.g. ``step 120/300  loss 3.0412  lr 1.00e-03  980 samples/s (490/worker)
    0.261 s/step  mined  elapsed 41s  ETA 1m02s`` (``lr`` None: not shown; ``workers``: the rate per
    worker is the global rate over them).

    ``elapsed_seconds`` counts from ``start_step`` (0, or the step a resumed run restarted at),
    so the ETA is the mean time per step so far times the steps left; at ``step == steps`` the
    line gives the total time instead. ``mined`` (None = mining off) says whether the batch was chosen by
    the mining service or drawn at random.
    """
    width = len(str(steps))
    parts = [
        f"step {step:>{width}}/{steps}",
        f"loss {loss:.4f}",
        *([f"lr {lr:.2e}"] if lr is not None else []),
        f"{samples_per_second:,.0f} samples/s ({samples_per_second / workers:,.0f}/worker)",
        f"{step_seconds:.3f} s/step",
    ]
    if mined is not None:
        parts.append("mined " if mined else "random")
    if step >= steps:
        parts.append(f"done in {format_duration(elapsed_seconds)}")
    else:
        parts.append(f"elapsed {format_duration(elapsed_seconds)}")
        parts.append(f"ETA {format_duration(eta_seconds(step, steps, elapsed_seconds, start_step))}")
    return "  ".join(parts)
