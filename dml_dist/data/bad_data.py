"""Bad data while reading shards: skipped, warned about once, counted by whoever owns the count.

A corrupt or truncated tar, an empty shard, an undecodable image, a missing or non-integer class
field never crash a reader. The reader calls ``BadDataLog.skip``, which counts the sample and
warns once per (shard, key) naming both. Each loader owns a ``BadDataLog``
(``loader.skipped_samples``; the training loop exports it as a Prometheus counter); the dataset
that decodes in a DataLoader worker process owns its own and hands its new count back with each
batch, which the loader adds (``BadDataLog.add``), so no count lives in a module global.
"""

from __future__ import annotations

import logging

log = logging.getLogger("dml_dist.data")


class BadSample(Exception):
    """A sample that cannot be used; ``shard`` and ``key`` name it."""

    def __init__(self, shard: str, key: str, reason: str):
        super().__init__(f"{shard}: {key}: {reason}")
        self.shard, self.key, self.reason = shard, key, reason


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
