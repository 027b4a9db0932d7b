"""Submit training jobs to a Ray cluster through Ray Jobs, and manage them.

``submit`` validates the config locally first (errors before anything is sent), then submits
``python -m dml_dist train CONFIG --address auto ...`` with a runtime environment that ships
the working directory and optional extra pip packages. The entrypoint is built with
``shlex.join`` from a list of arguments, so no config value is ever interpreted by a shell.

What is shipped is the project's files only: ``EXCLUDES`` leaves out secrets (``.aws``, ``.ssh``,
``.env``, ``*.pem``, Ray's token file and the file ``RAY_AUTH_TOKEN_PATH`` names, ...) as well as
virtual environments, git history, runs and data caches (Ray also honours ``.gitignore`` and
``.rayignore``), and a home directory is refused as the working directory. A flag or config
value with credentials in a URI is refused before anything is sent (``config/credentials.py``):
the entrypoint and the job's metadata are readable by anyone who can list the cluster's jobs.

Token authentication stays on: when a token is available (``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) and ``RAY_AUTH_MODE`` is unset, the client is
put in token mode so that it sends it.

The address is ``--address`` or, as for Ray's own job CLI, ``RAY_API_SERVER_ADDRESS``, then
``RAY_ADDRESS``. A client error (no such job, authentication refused) is one ``ValueError`` line.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from pathlib import Path
from typing import Any

from dml_dist.config.loader import load_config, resolve_config_path
from dml_dist.distributed.ray_auth import enable_token_auth

EXCLUDES = [
    # secrets: cloud and SSH credentials, environment files, keys, Ray's token, package tokens
    ".aws",
    ".ssh",
    ".gnupg",
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    ".ray",
    ".netrc",
    ".git-credentials",
    ".pypirc",
    ".docker",
    ".kube",
    ".config/gcloud",
    # not the project: environments, history, outputs, caches
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
"""Paths left out of the uploaded working directory (gitignore patterns, any depth unless they hold a ``/``)."""
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def resolve_address(address: str | None) -> str:
    """``--address``, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS`` (as ``ray job`` does);
    a ``ValueError`` saying so when none is set."""
    chosen = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not chosen:
        raise ValueError(
            "--address: no Ray dashboard address; pass --address http://HEAD:8265, "
            "or set RAY_ADDRESS (or RAY_API_SERVER_ADDRESS, which wins, as for `ray job`)"
        )
    from dml_dist.config.credentials import refuse_credentials

    refuse_credentials(chosen, "--address")  # printed with every job; Ray's token goes in RAY_AUTH_TOKEN
    return chosen


def client(address: str) -> Any:
    """A Ray Jobs client for the dashboard at ``address`` (``http://HEAD:8265``)."""
    enable_token_auth()
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as err:  # connection refused, authentication, version mismatch
        raise ValueError(f"--address {address}: {one_line_error(err)}") from err


def one_line_error(err: BaseException) -> str:
    """A Ray client error as one line: what failed and the fix where there is one."""
    text = " ".join(str(err).split())
    lowered = text.lower()
    if "401" in text or "403" in text or "authentication" in lowered or "unauthorized" in lowered:
        return (
            "the Ray cluster refused this client's authentication token; set RAY_AUTH_TOKEN (or "
            "~/.ray/auth_token) to the head's token (`ray get-auth-token` on the head)"
        )
    if "does not exist" in lowered or "404" in text:
        return f"no such job ({text[:200]})"
    if "connection" in lowered or "failed to connect" in lowered:
        return f"cannot reach the Ray Jobs API ({text[:200]}); is the head's dashboard running there?"
    return text[:300]


def build_entrypoint(
    config_rel: str,
    run_dir: str | None,
    overrides: list[str],
    workers: int | None,
    steps: int | None,
    storage: str | None = None,
    data: str | None = None,
    eval_data: str | None = None,
) -> str:
    args = ["python", "-m", "dml_dist", "train", config_rel, "--address", "auto"]
    if run_dir is not None:
        args += ["--run-dir", run_dir]
    if storage is not None:
        args += ["--storage", storage]
    if data is not None:
        args += ["--data", data]
    if eval_data is not None:
        args += ["--eval-data", eval_data]
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
    data: str | None = None,
    eval_data: str | None = None,
) -> str:
    """Submit a training job; returns its id. The config must lie inside ``working_dir``, or be
    the name of a shipped config (the job resolves it in its own copy of dml_dist). ``run_dir``
    must be given (``cli/cluster.py`` picks the default), so the job's metadata carries the
    run's name (``run_files.run_name``); ``data``/``eval_data`` are paths on the cluster, as
    ``train --data --eval-data`` takes them."""
    from dml_dist.config.credentials import refuse_credentials
    from dml_dist.run_files import RUN_METADATA_KEY, run_name

    for flag, value in (("--run-dir", run_dir), ("--storage", storage), ("--data", data), ("--eval-data", eval_data)):
        refuse_credentials(value, flag)
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
    runtime_env = runtime_env_for(root, pip)
    config_arg = str(config_path.relative_to(root)) if config_path.is_relative_to(root) else str(config)
    entrypoint = build_entrypoint(config_arg, run_dir, overrides, workers, steps, storage, data, eval_data)
    metadata = {RUN_METADATA_KEY: run_name(run_dir)} if run_dir else None
    jobs = client(address)
    for attempt in range(30):  # a head that has just started may not have its job agent yet
        try:
            job_id: str = jobs.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata)
            return job_id
        except RuntimeError as err:
            if "No available agent" not in str(err) or attempt == 29:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


def runtime_env_for(working_dir: Path, pip: list[str] | None = None) -> dict[str, Any]:
    """The job's runtime environment: ``working_dir`` less ``EXCLUDES`` (and the token file
    ``RAY_AUTH_TOKEN_PATH`` names, when it lies inside), plus ``pip`` packages. A home directory
    is refused: it holds a user's keys and tokens, wherever a tool keeps them."""
    root = working_dir.resolve()
    if root == Path.home().resolve():
        raise ValueError(
            f"--working-dir {root}: that is your home directory, and everything in it would be uploaded to the "
            "cluster; run submit from the project's directory or pass --working-dir PROJECT"
        )
    excludes = list(EXCLUDES)
    token_file = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if token_file and Path(token_file).resolve().is_relative_to(root):
        excludes.append("/" + Path(token_file).resolve().relative_to(root).as_posix())
    runtime_env: dict[str, Any] = {"working_dir": str(root), "excludes": excludes}
    if pip:
        runtime_env["pip"] = pip
    return runtime_env


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
