"""``dml-dist train`` (a training run on Ray, local by default) and ``dml-dist tune`` (a Ray Tune
search whose trials are training runs)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from dml_dist.cli.parser import Commands

if TYPE_CHECKING:
    from dml_dist.train.run_result import RunResult


def register_train(commands: Commands) -> None:
    train = commands.add("train", "train a model on a Ray cluster (local by default)")
    train.add_argument("config", help="experiment YAML, or a shipped config's name (quickstart, omniglot, ...)")
    train.add_argument(
        "--run-dir",
        default=None,
        help="run directory, new or empty unless resuming (default: a new runs/<config name>-<YYYYmmdd-HHMMSS>, "
        "inside STORAGE when there is one)",
    )
    train.add_argument(
        "--storage",
        default=None,
        help="directory every node mounts, or a URI (s3://, gs://) (train.storage; env DML_DIST_STORAGE): runs and data go there",
    )
    train.add_argument(
        "--address", default=None, help="Ray cluster address to join (default: $RAY_ADDRESS, else a new local instance)"
    )
    train.add_argument("--workers", type=int, help="Ray Train workers (train.workers)")
    train.add_argument("--steps", type=int, help="optimizer steps (train.steps)")
    train.add_argument("--seed", type=int, help="seed (train.seed)")
    train.add_argument(
        "--data", help="shards: ROOT (ROOT/train, and ROOT/test unless --eval-data) or a training shard directory"
    )
    train.add_argument("--eval-data", help="held-out shard directory (data.eval_shards); default ROOT/test of --data")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    train.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        type=_resume_mode,
        metavar="auto",
        help="continue the run in --run-dir from its latest checkpoint; --resume auto: resume when it has "
        "a checkpoint, else start fresh (job retries)",
    )
    train.add_argument(
        "--allow-changes",
        default="",
        metavar="FIELD[,FIELD]",
        help="config fields (or sections) that may differ from the resumed run's config.yaml",
    )
    train.set_defaults(func=cmd_train)


def _resume_mode(text: str) -> str:
    if text != "auto":
        raise argparse.ArgumentTypeError(f"expected nothing or 'auto', got {text!r}")
    return text


def register_tune(commands: Commands) -> None:
    tune = commands.add("tune", "search hyperparameters with Ray Tune; every trial is a training run")
    tune.add_argument("config", help="experiment YAML, or a shipped config's name")
    tune.add_argument(
        "--space", required=True, help="YAML: dotted config key -> {loguniform|uniform|choice|randint: ...}"
    )
    tune.add_argument("--trials", type=int, default=8, help="trials sampled from the space")
    tune.add_argument("--steps", type=int, help="optimizer steps of every trial (train.steps)")
    tune.add_argument("--grace-steps", type=int, default=100, help="ASHA: steps before a trial may be stopped")
    tune.add_argument("--storage", default=None, help="directory every node mounts (as for train)")
    tune.add_argument("--out", default=None, help="output directory (default STORAGE/tune/<config name>)")
    tune.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else local)")
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    tune.set_defaults(func=cmd_tune)


def cmd_train(args: argparse.Namespace) -> int:
    from dml_dist.train.preflight import check_faiss

    check_faiss()  # before anything else: a plain install without faiss fails here, in one line
    from dml_dist.config.loader import load_config, replaced
    from dml_dist.observability.logging import local_ray_env
    from dml_dist.train.launcher import run_training
    from dml_dist.train.run_directory import default_run_dir
    from dml_dist.train.storage import place_data, resolve_run_dir, resolve_storage

    overrides = list(args.set)
    for flag, key in (
        ("workers", "train.workers"),
        ("steps", "train.steps"),
        ("seed", "train.seed"),
        ("data", "data.train_shards"),
        ("eval_data", "data.eval_shards"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    if args.data is not None and args.eval_data is None:
        overrides.append("data.eval_shards=null")  # --data ROOT: ROOT/test, not the config's held-out set
    config = load_config(args.config, overrides)
    storage = resolve_storage(args.storage, config)
    if storage is not None:
        config = replaced(config, {"train.storage": str(storage), "data": place_data(config.data, storage)})
    if args.run_dir is None and args.resume:
        raise ValueError("--resume: name the run to continue with --run-dir (each run gets a new default directory)")
    run_dir = resolve_run_dir(args.run_dir, Path(args.config).stem, storage)
    if args.run_dir is None:
        run_dir = default_run_dir(run_dir)
    if args.address is None and not os.environ.get("RAY_ADDRESS"):
        for key, value in local_ray_env().items():  # this run starts its own one-machine Ray instance
            os.environ.setdefault(key, value)
    allowed = [field.strip() for field in args.allow_changes.split(",") if field.strip()]
    result = run_training(config, run_dir, address=args.address, resume=args.resume, allow_changes=allowed)
    print(run_summary(result), flush=True)
    return 0


def run_summary(result: RunResult) -> str:
    """The block printed at the end of ``dml-dist train``: held-out Recall@K against untrained,
    time and throughput, where the files are, and what to run next."""
    from dml_dist import storage

    local = storage.local_path(result.run_dir)
    if local is None:  # files in a URI storage: say where; eval and embed read local directories
        return "\n".join(["", *_figures(result), f"run directory {result.run_dir}"])
    local = local.resolve()
    lines = ["", *_figures(result)]
    nodes = {where["node_id"] for where in result.placement}
    if len(nodes) > 1:
        ranks = ", ".join(f"rank {w['rank']} on {w['node_id'][:8]}" for w in result.placement)
        lines.append(f"workers on {len(nodes)} nodes: {ranks}")
    files = [("run directory", local), ("curves", result.curves), ("gallery", local / "gallery.png")]
    lines += [f"{label:<14}{path}" for label, path in files if path and Path(path).exists()]
    lines.append(f"next: dml-dist eval {local}")
    lines.append(f"      dml-dist embed {local} --images DIR --out embeddings.npy")
    return "\n".join(lines)


def _figures(result: RunResult) -> list[str]:
    """Held-out Recall@K against untrained, then training time and throughput."""
    from dml_dist.eval.retrieval import format_recall_table
    from dml_dist.observability.progress import format_duration

    lines = []
    evaluation = result.evaluation
    if evaluation is not None:
        held = f" ({evaluation.num_queries} images of {evaluation.num_classes} unseen classes)"
        lines.append(f"held-out retrieval{held}:")
        rows = {"untrained": evaluation.untrained_recall, f"step {evaluation.step}": evaluation.recall}
        lines.append(format_recall_table(rows))
    pace = [f"trained in {format_duration(result.train_seconds)}"]
    if result.samples_per_second is not None:
        pace.append(f"{result.samples_per_second:,.0f} samples/s")
    lines.append(", ".join(pace))
    return lines


def cmd_tune(args: argparse.Namespace) -> int:
    from dml_dist.train.preflight import check_faiss

    check_faiss()
    from dml_dist import storage as locations
    from dml_dist.config.loader import load_config, replaced
    from dml_dist.train.storage import anchor_relative_paths, place_data, resolve_run_dir, resolve_storage
    from dml_dist.tune import METRIC, results_table, run_tune

    overrides = list(args.set) + ([f"train.steps={args.steps}"] if args.steps is not None else [])
    config = load_config(args.config, overrides)
    storage = resolve_storage(args.storage, config)
    if storage is not None and not locations.is_local(storage):
        raise ValueError(f"--storage: {storage}: dml-dist tune needs a directory every node mounts (URIs: train only)")
    if storage is not None:
        config = replaced(config, {"train.storage": storage, "data": place_data(config.data, storage)})
    config = anchor_relative_paths(config)
    out = Path(resolve_run_dir(args.out, str(Path("tune") / Path(args.config).stem), storage))
    report = run_tune(config, args.space, args.trials, out, args.grace_steps, args.address)
    keys = list(report["best"]["params"])
    print(results_table(report["trials"], keys), end="")
    print(f"best {METRIC} {report['best'][METRIC]:.4f} with {report['best']['params']}")
    print(f"best config: {out / 'best.yaml'} (dml-dist train {out / 'best.yaml'}); results in {out}")
    return 0
