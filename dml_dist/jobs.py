"""Submit training jobs to a Ray cluster through Ray Jobs, and manage them.

``submit`` validates the config locally first (errors before anything is sent), then submits
``python -m dml_dist train CONFIG --address auto ...`` with a runtime environment that ships
the working directory (the project, without virtual environments, runs and data caches) and
optional extra pip packages. The entrypoint is built with ``shlex.join`` from a list of
arguments, so no config value is ever interpreted by a shell.

Token authentication stays on: when a token is available (``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) and ``RAY_AUTH_MODE`` is unset, the client is
put in token mode so that it sends it.

The address is ``--address`` or, as for Ray's own job CLI, ``RAY_ADDRESS``.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from pathlib import Path
from typing import Any

from dml_dist.config.loader import load_config, resolve_config_path

EXCLUDES = [
    ".venv",
    ".git",
    "runs",
    "data/cache",
    "*.tar",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "__pycache__",
]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _enable_token_auth() -> None:
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if "RAY_AUTH_MODE" not in os.environ and ("RAY_AUTH_TOKEN" in os.environ or token_file.is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


def resolve_address(address: str | None) -> str:
    """``--address``, else ``RAY_ADDRESS``; a ``ValueError`` saying so when neither is set."""
    chosen = address or os.environ.get("RAY_ADDRESS")
    if not chosen:
        raise ValueError("--address: no Ray dashboard address; pass --address http://HEAD:8265 or set RAY_ADDRESS")
    return chosen


def client(address: str) -> Any:
    """A Ray Jobs client for the dashboard at ``address`` (``http://HEAD:8265``)."""
    _enable_token_auth()
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as err:  # connection refused, authentication, version mismatch
        raise ValueError(f"--address {address}: cannot reach the Ray Jobs API: {err}") from err


def build_entrypoint(
    config_rel: str,
    run_dir: str | None,
    overrides: list[str],
    workers: int | None,
    steps: int | None,
    storage: str | None = None,
) -> str:
    args = ["python", "-m", "dml_dist", "train", config_rel, "--address", "auto"]
    if run_dir is not None:
        args += ["--run-dir", run_dir]
    if storage is not None:
        args += ["--storage", storage]
    if workers is not None:
        args += ["--workers", str(workers)]
    if steps is not None:
        args += ["--steps", str(steps)]
    for item in overrides:
        args += ["--set", item]
    return shlex.join(args)


def submit(
    config: str,
    address: str,
    working_dir: str,
    run_dir: str | None,
    overrides: list[str],
    workers: int | None = None,
    steps: int | None = None,
    pip: list[str] | None = None,
    storage: str | None = None,
) -> str:
    """Submit a training job; returns its id. The config must lie inside ``working_dir``, or be
    the name of a shipped config (the job resolves it in its own copy of dml_dist)."""
    root = Path(working_dir).resolve()
    config_path = resolve_config_path(config).resolve()
    shipped_name = not Path(config).is_file()
    if not config_path.is_relative_to(root) and not shipped_name:
        raise ValueError(f"config {config}: must be inside --working-dir {root}, which is what the job receives")
    extra = list(overrides)
    if workers is not None:
        extra.append(f"train.workers={workers}")
    if steps is not None:
        extra.append(f"train.steps={steps}")
    load_config(config_path, extra)  # fail here, not on the cluster
    runtime_env: dict[str, Any] = {"working_dir": str(root), "excludes": EXCLUDES}
    if pip:
        runtime_env["pip"] = pip
    config_arg = str(config_path.relative_to(root)) if config_path.is_relative_to(root) else str(config)
    entrypoint = build_entrypoint(config_arg, run_dir, overrides, workers, steps, storage)
    jobs = client(address)
    for attempt in range(30):  # a head that has just started may not have its job agent yet
        try:
            job_id: str = jobs.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            return job_id
        except RuntimeError as err:
            if "No available agent" not in str(err) or attempt == 29:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


def follow(address: str, job_id: str) -> str:
    """Print the job's logs as they come; return its final status."""
    jobs = client(address)

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())
    return wait(address, job_id, timeout_s=60)


def wait(address: str, job_id: str, timeout_s: float) -> str:
    """Poll until the job reaches a terminal status (or the timeout); return the status."""
    jobs = client(address)
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(jobs.get_job_status(job_id).value)
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(1)


def list_jobs(address: str) -> list[dict[str, Any]]:
    return [
        {"id": job.submission_id or job.job_id, "status": str(job.status.value), "entrypoint": job.entrypoint}
        for job in client(address).list_jobs()
    ]


def status(address: str, job_id: str) -> str:
    return str(client(address).get_job_status(job_id).value)


def logs(address: str, job_id: str) -> str:
    return str(client(address).get_job_logs(job_id))


def stop(address: str, job_id: str) -> bool:
    return bool(client(address).stop_job(job_id))
