"""The report of ``bench gpu`` and its time budget.

The report is one JSON object, rewritten (atomically) after every section and every row, so a
run stopped at any point leaves what it measured. The budget: sections look at ``left()`` and
size their work to it; a watchdog thread ends the process ``GRACE_S`` before the end of the
budget whatever is running (a hung collective, a step slower than foreseen), after writing the
report with ``stopped_by_budget`` and ending the ranks this process started.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from dml_dist.atomic import write_json_atomic

GRACE_S = 5.0
"""The watchdog ends the process this long before the budget ends (exit and file write)."""
RESERVE_S = 15.0
"""Sections plan to finish this long before the budget ends, ahead of the watchdog."""


class Report:
    """The figures so far (``data``), written to ``path`` (if any) on every ``write``."""

    def __init__(self, path: str | None, minutes: float, mode: str):
        self.path = Path(path) if path else None
        self.started = time.monotonic()
        self.end = self.started + minutes * 60
        self.data: dict[str, Any] = {
            "suite": "gpu",
            "mode": mode,
            "budget_minutes": minutes,
            "complete": False,
            "ok": True,
            "stopped_by_budget": False,
        }
        self._lock = threading.Lock()

    @property
    def deadline(self) -> float:
        """When sections should be done (``time.monotonic``)."""
        return self.end - RESERVE_S

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, name: str, section: dict[str, Any]) -> None:
        """Set a section and write the report; a failed or erroneous section makes it not ok."""
        with self._lock:
            self.data[name] = section
            if section.get("status") in ("failed", "error"):
                self.data["ok"] = False
            self._write_locked()

    def finish(self) -> None:
        with self._lock:
            self.data["complete"] = True
            self._write_locked()

    def write(self) -> None:
        with self._lock:
            self._write_locked()

    def _write_locked(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.started, 2)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, self.data)

    def start_watchdog(self) -> None:
        """End the process ``GRACE_S`` before the budget ends, if it is still running."""
        timer = threading.Timer(max(self.end - GRACE_S - time.monotonic(), 0.0), self._stop)
        timer.daemon = True
        timer.start()

    def _stop(self) -> None:
        with self._lock:
            self.data["stopped_by_budget"] = True
            self._write_locked()
        for child in multiprocessing.active_children():
            child.kill()
        print(f"bench gpu: time budget of {self.data['budget_minutes']} min reached; report so far written", flush=True)
        sys.stdout.flush()
        os._exit(0)
