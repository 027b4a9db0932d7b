"""``dml-dist submit`` (a training job on a Ray cluster, through Ray Jobs) and ``dml-dist jobs``
(list, inspect, follow or stop them).

A submitted run gets its run directory here when none is given (``runs/<config>-<time>``, inside
the storage when there is one), so the job's metadata carries the run's name. Every error a Ray
Jobs call raises (no such job, token refused, head unreachable) is one line (``jobs.one_line_error``).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from dml_dist.cli.parser import Commands

T = TypeVar("T")
ADDRESS_HELP = (
    "Ray dashboard address, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, as `ray job`)"
)


def register(commands: Commands) -> None:
    submit = commands.add("submit", "submit a training job to a Ray cluster (Ray Jobs)")
    submit.add_argument("config", help="experiment YAML inside --working-dir, or a shipped config's name")
    submit.add_argument("--address", default=None, help=ADDRESS_HELP)
    submit.add_argument(
        "--working-dir",
        default=".",
        help="the project directory shipped to the cluster, less secrets (.aws, .ssh, .env, keys), "
        "environments, runs and caches (jobs.EXCLUDES); not a home directory",
    )
    submit.add_argument(
        "--run-dir", default=None, help="run directory on the cluster (default STORAGE/runs/<config name>)"
    )
    submit.add_argument(
        "--storage",
        default=None,
        help="directory every cluster node mounts, or a URI (train.storage); env DML_DIST_STORAGE",
    )
    submit.add_argument("--workers", type=int, help="Ray Train workers (train.workers)")
    submit.add_argument("--steps", type=int, help="optimizer steps (train.steps)")
    submit.add_argument(
        "--data", help="shards on the cluster: ROOT (ROOT/train and ROOT/test) or a training shard directory"
    )
    submit.add_argument("--eval-data", help="held-out shard directory on the cluster (default ROOT/test of --data)")
    submit.add_argument("--pip", action="append", default=[], help="extra pip package for the job's environment")
    submit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    submit.add_argument("--no-wait", action="store_true", help="print the job id and return")
    submit.set_defaults(func=cmd_submit)

    jobs = commands.add("jobs", "list, inspect, follow or stop Ray jobs")
    jobs.add_argument("action", choices=["list", "status", "logs", "stop"])
    jobs.add_argument("job_id", nargs="?", help="job id (all but list)")
    jobs.add_argument("--address", default=None, help=ADDRESS_HELP)
    jobs.add_argument("--follow", action="store_true", help="logs: keep printing until the job ends")
    jobs.set_defaults(func=cmd_jobs)


def cmd_submit(args: argparse.Namespace) -> int:
    from dml_dist import jobs
    from dml_dist.train.storage import STORAGE_ENV

    address = jobs.resolve_address(args.address)
    storage = args.storage or os.environ.get(STORAGE_ENV)
    # The default run directory of `train` (relative: inside the storage, else the job's working
    # directory), named here so that the job's metadata can carry the run's name.
    run_dir = args.run_dir or f"runs/{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    job_id = _ray_call(
        "submit",
        lambda: jobs.submit(
            args.config, address, args.working_dir, run_dir, args.set, args.workers, args.steps, args.pip, storage,
            data=args.data, eval_data=args.eval_data,
        ),
    )  # fmt: skip
    where = run_dir if Path(run_dir).is_absolute() or storage is None else f"{storage}/{run_dir}"
    print(f"submitted job {job_id}; dashboard {address}; run directory {where} (on the cluster)")
    if args.no_wait:
        return 0
    status = _ray_call("submit", lambda: jobs.follow(address, job_id))
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    from dml_dist import jobs

    address = jobs.resolve_address(args.address)
    what = f"jobs {args.action}" + (f" {args.job_id}" if args.job_id else "")
    if args.action == "list":
        for job in _ray_call(what, lambda: jobs.list_jobs(address)):
            print(f"{job['id']:<36} {job['status']:<10} {job['entrypoint']}")
        return 0
    if not args.job_id:
        raise ValueError(f"jobs {args.action}: a job id is required")
    if args.action == "status":
        print(_ray_call(what, lambda: jobs.status(address, args.job_id)))
    elif args.action == "logs":
        if args.follow:
            print(f"job {args.job_id}: {_ray_call(what, lambda: jobs.follow(address, args.job_id))}")
        else:
            print(_ray_call(what, lambda: jobs.logs(address, args.job_id)), end="")
    else:
        print(f"stop requested: {_ray_call(what, lambda: jobs.stop(address, args.job_id))}")
    return 0


def _ray_call(what: str, call: Callable[[], T]) -> T:
    """``call()``, with any error of the Ray Jobs client turned into one ``ValueError`` line."""
    from dml_dist import jobs

    try:
        return call()
    except ValueError:
        raise
    except Exception as err:  # the client raises RuntimeError, HTTP and connection errors
        raise ValueError(f"{what}: {jobs.one_line_error(err)}") from err
