"""Bad data and storage errors while reading shards: the first is skipped and counted, the second fails.

*Bad data* is in the bytes: a corrupt or truncated tar, an empty shard, an undecodable image, a
missing or non-integer class field. Retrying cannot fix it and training without the sample is
right, so a reader calls ``BadDataLog.skip``, which counts the sample and warns once per
(shard, key) naming both. Each loader owns a ``BadDataLog`` (``loader.skipped_samples``; the
training loop exports it as a Prometheus counter); the dataset that decodes in a DataLoader
worker process owns its own and hands its new count back with each batch, which the loader adds
(``BadDataLog.add``), so no count lives in a module global.

A *storage error* is in the way to the bytes: the shard is missing, not readable (permission),
or the file system or object store fails (EIO, a network error): an ``OSError`` from opening or
reading. Counting it as bad data would train a class on fewer (or no) images for as long as
the fault lasts, silently. So a read is retried ``IO_ATTEMPTS`` times with a growing pause (a
transient fault passes), and then ``StorageError`` is raised: the step fails, and Ray Train
restarts the worker group from the last checkpoint (``train.max_failures``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("dml_dist.data")

IO_ATTEMPTS = 3
"""Tries of one read before a storage error fails the step."""
IO_PAUSE_S = 0.5
"""Pause after the first failed try; doubled after each further one (0.5 s, 1 s)."""

T = TypeVar("T")


class BadSample(Exception):
    """A sample that cannot be used; ``shard`` and ``key`` name it."""

    def __init__(self, shard: str, key: str, reason: str):
        super().__init__(f"{shard}: {key}: {reason}")
        self.shard, self.key, self.reason = shard, key, reason


class StorageError(OSError):
    """A shard that could not be read after ``IO_ATTEMPTS`` tries; fails the step (never skipped)."""


def wait_or_raise(attempt: int, what: str, err: OSError) -> None:
    """After the ``attempt``-th failed read of ``what``: pause before the next try, or raise
    ``StorageError`` naming ``what`` and the error when it was the last."""
    if attempt >= IO_ATTEMPTS:
        reason = getattr(err, "strerror", None) or str(err)
        raise StorageError(f"data: cannot read {what} ({reason}) after {attempt} tries") from err
    log.warning("data: reading %s failed (%s); try %d of %d", what, err, attempt + 1, IO_ATTEMPTS)
    time.sleep(IO_PAUSE_S * 2 ** (attempt - 1))


def read_with_retry(read: Callable[[], T], what: str) -> T:
    """``read()``, tried again on ``OSError`` (see the module docstring); ``StorageError`` when it persists."""
    attempt = 1
    while True:
        try:
            return read()
        except OSError as err:
            wait_or_raise(attempt, what, err)
            attempt += 1


class BadDataLog:
    """Count of skipped samples, with a warning once per (shard, key) seen by this object."""

    def __init__(self) -> None:
        self.total = 0
        self._warned: set[tuple[str, str]] = set()

    def skip(self, shard: str, key: str, reason: str) -> None:
        """Count one skipped sample and warn (once per shard and key)."""
        self.total += 1
        if (shard, key) not in self._warned:
            self._warned.add((shard, key))
            log.warning("data: skipped %s in shard %s: %s", key, shard, reason)

    def add(self, count: int) -> None:
        """Add skips counted (and already warned about) elsewhere, e.g. in a DataLoader worker."""
        self.total += count
