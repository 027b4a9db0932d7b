"""``dml-dist submit`` (a training job on a Ray cluster, through Ray Jobs) and ``dml-dist jobs``
(list, inspect, follow or stop them)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dml_dist.cli.parser import Commands

ADDRESS_HELP = "Ray dashboard address, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)"


def register(commands: Commands) -> None:
    submit = commands.add("submit", "submit a training job to a Ray cluster (Ray Jobs)")
    submit.add_argument("config", help="experiment YAML inside --working-dir, or a shipped config's name")
    submit.add_argument("--address", default=None, help=ADDRESS_HELP)
    submit.add_argument("--working-dir", default=".", help="directory shipped to the cluster")
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
    job_id = jobs.submit(
        args.config, address, args.working_dir, args.run_dir, args.set, args.workers, args.steps, args.pip, storage
    )
    where = args.run_dir or f"{storage or '<job working directory>'}/runs/{Path(args.config).stem}"
    print(f"submitted job {job_id}; dashboard {address}; run directory {where} (on the cluster)")
    if args.no_wait:
        return 0
    status = jobs.follow(address, job_id)
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    from dml_dist import jobs

    address = jobs.resolve_address(args.address)
    if args.action == "list":
        for job in jobs.list_jobs(address):
            print(f"{job['id']:<36} {job['status']:<10} {job['entrypoint']}")
        return 0
    if not args.job_id:
        raise ValueError(f"jobs {args.action}: a job id is required")
    if args.action == "status":
        print(jobs.status(address, args.job_id))
    elif args.action == "logs":
        if args.follow:
            print(f"job {args.job_id}: {jobs.follow(address, args.job_id)}")
        else:
            print(jobs.logs(address, args.job_id), end="")
    else:
        print(f"stop requested: {jobs.stop(address, args.job_id)}")
    return 0
