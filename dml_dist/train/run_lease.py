"""One run per run directory: a lease file held by the driver while the run lives.

``RUN_DIR/lease.json`` names the holder: host, process id, Ray job id (once the driver joined
Ray), when it started, and a heartbeat time that a daemon thread of the holder rewrites every
``HEARTBEAT_SECONDS``. A second driver that finds a lease is refused in one line naming the
holder, unless the lease is stale:

- its heartbeat is older than ``EXPIRY_SECONDS`` (a holder on a lost node, or frozen), or
- the holder ran on this host and its process is gone (a killed ``dml-dist train``): taken over
  at once, no wait.

A stale lease is taken over: replaced by the new holder's. The lease is created with
``O_CREAT | O_EXCL`` on a local or shared file system, so of two drivers starting together
exactly one wins; on a URI storage (no exclusive create) the new holder writes its lease, then
reads it back and gives up when another holder's is there. The holder removes its lease when
the run ends, also when it fails (and the directory, when it made it and nothing else is in it);
a lease left by a crash is stale once its heartbeat expires.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from dml_dist import storage

LEASE = "lease.json"
HEARTBEAT_SECONDS = 20.0
EXPIRY_SECONDS = 120.0
"""A lease whose heartbeat is older than this is stale: six missed heartbeats."""


@dataclass
class Holder:
    """Who holds a run directory."""

    host: str
    pid: int
    token: str
    started: float
    heartbeat: float
    ray_job_id: str | None = None

    def describe(self, now: float) -> str:
        job = f", Ray job {self.ray_job_id}" if self.ray_job_id else ""
        return f"pid {self.pid} on {self.host}{job}, heartbeat {now - self.heartbeat:.0f} s ago"

    def is_stale(self, now: float) -> bool:
        if now - self.heartbeat > EXPIRY_SECONDS:
            return True
        return self.host == socket.gethostname() and not _process_alive(self.pid)


class RunDirectoryBusy(ValueError):
    """Another live run holds the run directory."""


class Lease:
    """This process's lease on a run directory (a local path or a URI); see the module docstring."""

    def __init__(self, run_dir: Path | str):
        self.run_dir = run_dir
        self.path = storage.join(run_dir, LEASE)
        now = time.time()
        self.holder = Holder(socket.gethostname(), os.getpid(), uuid.uuid4().hex, now, now)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.created_dir = False

    def acquire(self) -> None:
        """Hold the lease, taking over a stale one; ``RunDirectoryBusy`` naming a live holder."""
        if not self._create():
            current = self._read()
            now = time.time()
            if current is not None and not current.is_stale(now):
                raise RunDirectoryBusy(
                    f"--run-dir {self.run_dir} is in use by another run ({current.describe(now)}; its lease "
                    f"{LEASE} expires {EXPIRY_SECONDS:.0f} s after its last heartbeat): choose another --run-dir"
                )
            if current is not None:
                print(f"run directory: taking over the stale lease of {current.describe(now)}", flush=True)
            self._write()
        current = self._read()  # two takers of one stale lease: the last writer holds it
        if current is None or current.token != self.holder.token:
            who = current.describe(time.time()) if current is not None else "unknown"
            raise RunDirectoryBusy(f"--run-dir {self.run_dir} was just taken by another run ({who})")
        self._thread = threading.Thread(target=self._beat, name="dml-dist-lease", daemon=True)
        self._thread.start()

    def set_ray_job(self, job_id: str) -> None:
        """Name the Ray job in the lease (known once the driver joined Ray)."""
        self.holder.ray_job_id = job_id
        self._write()

    def release(self) -> None:
        """Stop the heartbeat and remove the lease, if it is still this process's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        current = self._read()
        if current is not None and current.token == self.holder.token:
            storage.delete_file(self.path)
            if self.created_dir and not storage.list_names(self.run_dir):
                storage.delete_dir(self.run_dir)  # a run refused before writing leaves no empty directory

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self.holder.heartbeat = time.time()
            with contextlib.suppress(OSError, ValueError):  # a missed beat is retried; expiry allows six
                self._write()

    def _create(self) -> bool:
        """Create the lease file if none exists; False when one does."""
        self.created_dir = not storage.exists(self.run_dir)
        return storage.create_new(self.path, json.dumps(asdict(self.holder)).encode())

    def _write(self) -> None:
        storage.write_bytes(self.path, json.dumps(asdict(self.holder)).encode())

    def _read(self) -> Holder | None:
        """The lease's holder; None when there is no lease. An unreadable lease (torn by a crash
        while it was first written) counts as stale."""
        text = storage.read_text(self.path)  # None also when removed by its holder while we looked
        if text is None:
            return None
        try:
            return Holder(**json.loads(text))
        except (json.JSONDecodeError, TypeError):
            return Holder("?", -1, "", 0.0, 0.0)


@contextlib.contextmanager
def held(run_dir: Path | str) -> Iterator[Lease]:
    """Hold ``run_dir``'s lease for the ``with`` block (released also when it raises)."""
    lease = Lease(run_dir)
    lease.acquire()
    try:
        yield lease
    finally:
        lease.release()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
