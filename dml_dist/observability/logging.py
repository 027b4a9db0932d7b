"""The console: our own lines, library loggers at WARNING unless asked, known warnings filtered.

What a run prints is ours: progress bars, one line per logged step, evaluations, the summary.
Libraries speak only at ``--log-level`` (default WARNING). ``quiet_libraries`` runs in the
driver (``dml-dist`` itself) and at the top of every Ray Train worker, because each worker is a
separate process whose loggers and warning filters start from scratch. The level reaches the
workers through ``DML_DIST_LOG_LEVEL``: a local Ray instance inherits the driver's environment,
and ``worker_env()`` is what a runtime environment passes to the workers of a remote cluster.

A warning is filtered only when it is known, cannot be fixed in this code base, and says
nothing a user can act on; each entry of ``KNOWN_WARNINGS`` says why. Everything else a library
warns about still shows.
"""

from __future__ import annotations

import logging
import os
import warnings

LOG_LEVEL_ENV = "DML_DIST_LOG_LEVEL"
"""Environment variable carrying ``--log-level`` to every process of a run."""
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_LEVEL = "WARNING"

LIBRARY_LOGGERS = (
    "ray",
    "ray.train",
    "ray.data",
    "deepspeed",
    "DeepSpeed",
    "faiss",
    "torch",
    "webdataset",
    "matplotlib",
    "PIL",
    "urllib3",
    "filelock",
    "fsspec",
)
"""Loggers of the libraries a run uses; set to the library level (child loggers inherit it)."""

KNOWN_LOG_NOTICES: tuple[tuple[str, str], ...] = (
    (
        "ray._private.authentication.authentication_token_setup",
        "Ray's WARNING on every new local instance that token authentication is on (as intended, "
        "and the README says so). Setting RAY_AUTH_MODE=token ourselves would silence it only when "
        "ray is not yet imported (Ray caches the mode), so the notice is held at ERROR instead.",
    ),
    (
        "torch.utils.cpp_extension",
        "With torch's standard (CUDA-capable) build on a machine without CUDA, DeepSpeed's CPU ops "
        "import torch's extension builder, which warns 'No CUDA runtime is found' in every worker. "
        "The CPU ops need no CUDA runtime: nothing to act on.",
    ),
)
"""(logger, why): library loggers held at ERROR below DEBUG/INFO: notices nobody acts on."""

KNOWN_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (
        r"`torch\.distributed\.all_gather_into_tensor` is deprecated",
        FutureWarning,
        "DeepSpeed's ZeRO optimizer calls it (deepspeed/comm/torch.py picks it whenever torch has "
        "it); torch 2.13 deprecates it in favour of all_gather_single. Not our call, not fixable here.",
    ),
    (
        r"`torch\.distributed\.reduce_scatter_tensor` is deprecated",
        FutureWarning,
        "DeepSpeed's ZeRO stage 2 gradient reduction, same story as all_gather_into_tensor.",
    ),
    (
        r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
        FutureWarning,
        "Our autograd all-gather (dist/collectives.py): its only replacement is the private "
        "torch.distributed._functional_collectives; the deprecated one is still exact (tests/distributed).",
    ),
)
"""(message regex, category, why): warnings filtered in every process of a run."""

RAY_PROCESS_WARNINGS: tuple[tuple[str, str], ...] = (
    (
        "`ExecutionOptions.exclude_resources` is deprecated",
        "Ray Train's own controller (an actor that runs none of our code) builds Ray Data's default "
        "execution options, which warn at every run under Ray 2.60: not ours to fix.",
    ),
)
"""(message prefix, why): warnings of Ray's own processes, filtered through ``PYTHONWARNINGS`` in
the job's environment (``worker_env``), since no ``warnings.filterwarnings`` of ours runs there."""


def library_level(level: str | None = None) -> str:
    """The level libraries log at: ``level``, else ``DML_DIST_LOG_LEVEL``, else WARNING."""
    chosen = (level or os.environ.get(LOG_LEVEL_ENV) or DEFAULT_LEVEL).upper()
    if chosen not in LEVELS:
        raise ValueError(f"--log-level: expected one of {', '.join(LEVELS)}, got {chosen!r}")
    return chosen


def quiet_libraries(level: str | None = None) -> None:
    """Set the root and every library logger to ``library_level(level)``; filter ``KNOWN_WARNINGS``.

    Idempotent; called in the driver and first thing in every worker. At DEBUG and INFO nothing
    is filtered, so the known warnings can still be seen when asked for.
    """
    chosen = library_level(level)
    # The root logger too: Ray Train sets a worker's root logger to INFO, and some library
    # loggers hang off it under odd names (Ray Train's context logs "Reporting training
    # result ..." through a logger named by its file path). Our own lines are prints.
    for name in ("", *LIBRARY_LOGGERS):
        logging.getLogger(name).setLevel(chosen)
    if chosen in ("DEBUG", "INFO"):
        return
    for name, _ in KNOWN_LOG_NOTICES:
        logging.getLogger(name).setLevel("ERROR")
    for pattern, category, _ in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=f".*{pattern}", category=category)


def worker_env(level: str | None = None) -> dict[str, str]:
    """Environment variables that carry the console settings to workers on other nodes
    (``runtime_env={"env_vars": worker_env()}``)."""
    env = {LOG_LEVEL_ENV: library_level(level)}
    if env[LOG_LEVEL_ENV] not in ("DEBUG", "INFO") and "PYTHONWARNINGS" not in os.environ:
        env["PYTHONWARNINGS"] = ",".join(f"ignore:{prefix}" for prefix, _ in RAY_PROCESS_WARNINGS)
    if os.environ.get("TQDM_DISABLE"):
        env["TQDM_DISABLE"] = os.environ["TQDM_DISABLE"]
    return env


def configure_console(level: str | None, quiet: bool) -> None:
    """The driver's console settings, before Ray or any library is imported.

    - ``DML_DIST_LOG_LEVEL`` for the workers (``quiet_libraries`` reads it there);
    - ``RAY_LOGGER_LEVEL``: read once when ``ray`` is imported, it sets the ``ray`` logger of the
      driver and of every process of a local Ray instance (``ray.init`` would reset it to INFO);
    - ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0`` unless set: Ray Train's node-preemption watcher
      has nothing to watch on one machine, and its actor logs a ``core_worker.cc ... E`` line at
      start; a cluster keeps it (see ``local_ray_env``);
    - ``-q``: no progress bars (``TQDM_DISABLE``) and libraries at ERROR.

    A local instance also gets ``local_ray_env`` (``cli.cmd_train``).
    """
    chosen = "ERROR" if quiet and level is None else library_level(level)
    os.environ[LOG_LEVEL_ENV] = chosen
    if level is not None or quiet:
        os.environ["RAY_LOGGER_LEVEL"] = chosen.lower()
    else:  # a user's own RAY_LOGGER_LEVEL stands unless a flag says otherwise
        os.environ.setdefault("RAY_LOGGER_LEVEL", chosen.lower())
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
    quiet_libraries(chosen)


def local_ray_env() -> dict[str, str]:
    """Settings for a Ray instance this process starts itself (one machine); applied with
    ``os.environ.setdefault`` before ``ray.init(address="local")``, so a user's own wins.

    ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0``: one machine has no node to be preempted, and the
    watcher's actor logs a ``core_worker.cc ... E`` line when it starts. (Read by Ray Train's
    controller, a process the new instance starts, so it may be set after ``import ray``.)

    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: the node's address is the loopback one (Ray's
    one-machine mode, despite the name: on Linux it defaults to 1, a node reachable from other
    machines), so every endpoint of the instance listens on 127.0.0.1 only: GCS, raylet, the
    dashboard agent and the metrics export, which answers without authentication. Ray reads it
    when ``ray`` is imported, so it must be set before that (``dml-dist train`` does;
    ``tests/integration/test_exposure.py`` checks the listening addresses of a local run).
    """
    return {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
