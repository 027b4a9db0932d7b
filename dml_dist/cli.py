"""The ``dml-dist`` command line: train | eval | embed | shards | config | bench | submit | jobs.

Flags override the YAML config (``--steps 100`` is ``--set train.steps=100``); every user error
is reported as one line naming the field or file, with exit status 2. A config is a YAML file or
the name of a shipped one (``dml-dist train quickstart``).

The console is ours: library loggers speak at ``--log-level`` (WARNING by default) and known
warnings nobody can act on are filtered in every process (``observability/logging.py``); ``-q``
turns the progress bars off and the libraries down to ERROR. Progress bars go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from dml_dist import __version__
from dml_dist.observability.logging import LEVELS, configure_console


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, except where there is none to show (None, off, [])."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, []) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_console(args.log_level, args.quiet)
    from dml_dist.train.errors import TrainingStopped

    try:
        return int(args.func(args) or 0)
    except ValueError as err:
        print(f"dml-dist: error: {err}", file=sys.stderr)
        return 2
    except TrainingStopped as err:
        print(f"dml-dist: training stopped: {err}", file=sys.stderr)
        return 1


def _console_options(default: Any) -> argparse.ArgumentParser:
    """``--log-level`` and ``-q``, accepted before and after the command's name (a command's
    parser has ``default=SUPPRESS``, so it keeps what was given before the name)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        type=str.upper,
        choices=LEVELS,
        default=default,
        help="level of the libraries' loggers (Ray, DeepSpeed, torch, faiss); default WARNING, "
        "DEBUG or INFO also show the known warnings that are otherwise filtered",
    )
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
        help="quiet: no progress bars, and libraries at ERROR (our own lines and results stay)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dml-dist",
        description="Distributed large-batch deep metric learning.",
        formatter_class=HelpFormatter,
        parents=[_console_options(default=None)],
    )
    parser.add_argument("--version", action="version", version=f"dml-dist {__version__}")
    common = _console_options(default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    def add_command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter, parents=[common])

    train = add_command("train", "train a model on a Ray cluster (local by default)")
    train.add_argument("config", help="experiment YAML, or a shipped config's name (quickstart, omniglot, ...)")
    train.add_argument(
        "--run-dir", default=None, help="run directory (default STORAGE/runs/<config name>, or runs/<config name>)"
    )
    train.add_argument(
        "--storage",
        default=None,
        help="directory every node mounts (train.storage; env DML_DIST_STORAGE): runs and generated data go there",
    )
    train.add_argument(
        "--address", default=None, help="Ray cluster address to join (default: $RAY_ADDRESS, else a new local instance)"
    )
    train.add_argument("--workers", type=int, help="Ray Train workers (train.workers)")
    train.add_argument("--steps", type=int, help="optimizer steps (train.steps)")
    train.add_argument("--seed", type=int, help="seed (train.seed)")
    train.add_argument("--data", help="training shard directory (data.train_shards)")
    train.add_argument("--eval-data", help="held-out shard directory (data.eval_shards)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint")
    train.set_defaults(func=cmd_train)

    evaluate = add_command("eval", "held-out retrieval of a trained run")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--data", help="shard directory to evaluate on (default: the run's eval data)")
    evaluate.add_argument("--json", help="also write the figures to this JSON file")
    evaluate.add_argument(
        "--protocol", choices=["cub200", "cars196", "sop", "inshop"], help="the data set's K list (eval.protocol)"
    )
    evaluate.set_defaults(func=cmd_eval)

    embed = add_command("embed", "embed a folder of images with a trained run")
    embed.add_argument("run_dir")
    embed.add_argument("--images", required=True, help="folder of images (searched recursively) or a shard directory")
    embed.add_argument("--out", required=True, help="output .npy (float32 [n, d]); FILE.json lists the images")
    embed.set_defaults(func=cmd_embed)

    shards = add_command(
        "shards",
        "write WebDataset shards, a class index and a manifest (every image is decoded; bad files are named and skipped)",
    )
    shards.add_argument(
        "src",
        help="image folder (a leaf folder per class), a data set root for cub200/cars196/sop/inshop, "
        "or a config YAML for --format procedural",
    )
    shards.add_argument("out", help="output directory (OUT/train and OUT/test when the source is split)")
    shards.add_argument(
        "--format",
        choices=["folder", "cub200", "cars196", "sop", "inshop", "procedural"],
        default="folder",
        help="source layout",
    )
    shards.add_argument("--samples-per-shard", type=int, default=2000, help="images per tar shard")
    shards.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="folder format: share of the (sorted) classes held out as OUT/test; 0 = write OUT as one set",
    )
    shards.set_defaults(func=cmd_shards)

    config = add_command("config", "show a resolved config with every default and its doc, or the JSON Schema")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser(
        "show",
        help="the resolved config as commented YAML (loads back as the same config)",
        formatter_class=HelpFormatter,
        parents=[common],
    )
    show.add_argument(
        "config", nargs="?", help="experiment YAML or shipped config name (default: the built-in defaults)"
    )
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    show.set_defaults(func=cmd_config_show)
    schema = config_sub.add_parser(
        "schema", help="the JSON Schema of config files (for editors)", formatter_class=HelpFormatter, parents=[common]
    )
    schema.set_defaults(func=cmd_config_schema)

    bench = add_command("bench", "benchmark suites")
    bench.add_argument("suite", choices=["losses", "scaling", "mining", "data", "reproduce", "peers"])
    bench.add_argument("--json", help="also write the figures to this JSON file")
    bench.add_argument("--sizes", default="128,320,1000", help="losses: comma-separated N")
    bench.add_argument("--repeats", type=int, default=7, help="losses: timed repeats per case")
    bench.add_argument(
        "--memory-sizes", default="8192", help="losses: cross-batch memory sizes M (comma-separated, '' = none)"
    )
    bench.add_argument("--chunk-size", type=int, default=100, help="scaling: GradCache chunk of the chunked case")
    bench.add_argument("--images", help="data: image folder or .zip (default: the Omniglot zip, else procedural)")
    bench.add_argument("--loader-workers", type=int, default=0, help="data: DataLoader workers (0 = in-process)")
    bench.add_argument("--classes", type=int, default=100_000, help="mining: C classes to select from")
    bench.add_argument("--quick", action="store_true", help="reproduce, peers: the tiny scale, not the full one")
    bench.add_argument("--only", help="reproduce: comma-separated groups (losses,n,omniglot); default all")
    bench.add_argument("--out", default="docs/results", help="reproduce: where results.md and the plots go")
    bench.add_argument("--steps", type=int, help="reproduce, peers: steps of every run (default: the scale's)")
    bench.add_argument("--n", type=int, help="reproduce: N of the procedural loss comparison (default 128); peers: N")
    bench.add_argument("--n-sweep", help="reproduce: the N of the sweep, comma-separated (default 64,...,1000)")
    bench.add_argument("--config", default="omniglot", help="peers: the dml-dist config every row follows")
    bench.add_argument(
        "--data", help="peers: omniglot (alphabet split), procedural, or a training shard directory (with --eval-data)"
    )
    bench.add_argument("--eval-data", help="peers: held-out shard directory")
    bench.add_argument("--seeds", default="0", help="peers: comma-separated seeds (mean and spread over them)")
    bench.add_argument("--peer-lr", type=float, default=1e-3, help="peers: Adam learning rate of the PML rows")
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="peers: override a config field")
    bench.add_argument(
        "--backbones", default="config,conv4_bn", help="peers: backbones of the PML rows (config, conv4_bn)"
    )
    bench.add_argument("--runs", help="peers: where the dml-dist run directories go (default runs/bench-peers)")
    bench.set_defaults(func=cmd_bench)

    submit = add_command("submit", "submit a training job to a Ray cluster (Ray Jobs)")
    submit.add_argument("config", help="experiment YAML inside --working-dir, or a shipped config's name")
    submit.add_argument(
        "--address", default=None, help="Ray dashboard address, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)"
    )
    submit.add_argument("--working-dir", default=".", help="directory shipped to the cluster")
    submit.add_argument(
        "--run-dir", default=None, help="run directory on the cluster (default STORAGE/runs/<config name>)"
    )
    submit.add_argument(
        "--storage", default=None, help="directory every cluster node mounts (train.storage); env DML_DIST_STORAGE"
    )
    submit.add_argument("--workers", type=int, help="Ray Train workers (train.workers)")
    submit.add_argument("--steps", type=int, help="optimizer steps (train.steps)")
    submit.add_argument("--pip", action="append", default=[], help="extra pip package for the job's environment")
    submit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    submit.add_argument("--no-wait", action="store_true", help="print the job id and return")
    submit.set_defaults(func=cmd_submit)

    jobs = add_command("jobs", "list, inspect, follow or stop Ray jobs")
    jobs.add_argument("action", choices=["list", "status", "logs", "stop"])
    jobs.add_argument("job_id", nargs="?", help="job id (all but list)")
    jobs.add_argument(
        "--address", default=None, help="Ray dashboard address, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)"
    )
    jobs.add_argument("--follow", action="store_true", help="logs: keep printing until the job ends")
    jobs.set_defaults(func=cmd_jobs)

    tune = add_command("tune", "search hyperparameters with Ray Tune; every trial is a training run")
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
    return parser


def cmd_tune(args: argparse.Namespace) -> int:
    from dml_dist.config.loader import load_config
    from dml_dist.train.storage import place_data, resolve_run_dir, resolve_storage
    from dml_dist.tune import METRIC, results_table, run_tune

    overrides = list(args.set) + ([f"train.steps={args.steps}"] if args.steps is not None else [])
    config = load_config(args.config, overrides)
    storage = resolve_storage(args.storage, config)
    if storage is not None:
        config.train.storage = str(storage)
        place_data(config.data, storage)
    out = resolve_run_dir(args.out, str(Path("tune") / Path(args.config).stem), storage)
    report = run_tune(config, args.space, args.trials, out, args.grace_steps, args.address)
    keys = list(report["best"]["params"])
    print(results_table(report["trials"], keys), end="")
    print(f"best {METRIC} {report['best'][METRIC]:.4f} with {report['best']['params']}")
    print(f"best config: {out / 'best.yaml'} (dml-dist train {out / 'best.yaml'}); results in {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from dml_dist.config.loader import load_config
    from dml_dist.eval.retrieval import format_recall_table
    from dml_dist.observability.logging import local_ray_env
    from dml_dist.train.launcher import run_training
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
    config = load_config(args.config, overrides)
    storage = resolve_storage(args.storage, config)
    if storage is not None:
        config.train.storage = str(storage)
        place_data(config.data, storage)
    run_dir = resolve_run_dir(args.run_dir, Path(args.config).stem, storage)
    if args.address is None and not os.environ.get("RAY_ADDRESS"):
        for key, value in local_ray_env().items():  # this run starts its own one-machine Ray instance
            os.environ.setdefault(key, value)
    result = run_training(config, run_dir, address=args.address, resume=args.resume)
    print(run_summary(result, run_dir, format_recall_table), flush=True)
    return 0


def run_summary(result: dict[str, Any], run_dir: Path, format_recall_table: Any) -> str:
    """The block printed at the end of ``dml-dist train``: held-out Recall@K against untrained,
    time and throughput, where the files are, and what to run next."""
    run_dir = Path(result.get("run_dir") or run_dir).resolve()
    recall = {int(k): v for k, v in result.get("recall", {}).items()}
    untrained = {int(k): v for k, v in result.get("untrained_recall", {}).items()}
    lines = [""]
    if recall:
        held = ""
        if "num_queries" in result and "num_classes" in result:
            held = f" ({result['num_queries']} images of {result['num_classes']} unseen classes)"
        lines.append(f"held-out retrieval{held}:")
        lines.append(format_recall_table({"untrained": untrained, f"step {result.get('step', '')}": recall}))
    pace = []
    if result.get("train_seconds") is not None:
        from dml_dist.observability.progress import format_duration

        pace.append(f"trained in {format_duration(float(result['train_seconds']))}")
    if result.get("samples_per_second") is not None:
        pace.append(f"{float(result['samples_per_second']):,.0f} samples/s")
    if pace:
        lines.append(", ".join(pace))
    nodes = {where["node_id"] for where in result.get("placement", [])}
    if len(nodes) > 1:
        ranks = ", ".join(f"rank {w['rank']} on {w['node_id'][:8]}" for w in result["placement"])
        lines.append(f"workers on {len(nodes)} nodes: {ranks}")
    gallery = result.get("gallery") or (run_dir / "gallery.png")
    files = [("run directory", run_dir), ("curves", result.get("curves")), ("gallery", gallery)]
    lines += [f"{label:<14}{path}" for label, path in files if path and Path(path).exists()]
    lines.append(f"next: dml-dist eval {run_dir}")
    lines.append(f"      dml-dist embed {run_dir} --images DIR --out embeddings.npy")
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    from dml_dist.data.datasets import resolve_data
    from dml_dist.eval.api import load_embedder
    from dml_dist.eval.gallery import GALLERY, write_gallery
    from dml_dist.eval.heldout import evaluate_shards
    from dml_dist.eval.retrieval import format_report_table

    embedder = load_embedder(args.run_dir)
    config = embedder.config
    if args.protocol:
        config.eval.protocol = args.protocol
        config.eval.validate()
    data = Path(args.data) if args.data else resolve_data(config.data).eval
    held = evaluate_shards(
        embedder.model, data, config.data, config.eval, embedder.device, seed=config.train.seed, progress=True
    )
    report = held.report
    print(
        f"{report.extra['protocol']}: {report.num_queries} queries, {report.num_gallery} gallery images, "
        f"{report.num_classes} classes ({data})"
    )
    print(format_report_table({Path(args.run_dir).name: report}))
    if config.eval.gallery_queries > 0:
        gallery = write_gallery(
            Path(args.run_dir) / GALLERY,
            held.emb,
            held.labels,
            held.keys,
            data,
            held.query_idx,
            held.gallery_idx,
            num_queries=config.eval.gallery_queries,
            k=config.eval.gallery_top_k,
            seed=config.train.seed,
            title=f"{Path(args.run_dir).name} step {embedder.step}",
        )
        print(f"retrieval gallery: {gallery}")
    if args.json:
        Path(args.json).write_text(json.dumps({**report.as_dict(), "data": str(data)}, indent=2))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from dml_dist.data.shards import is_complete
    from dml_dist.eval.api import load_embedder
    from dml_dist.eval.embed import embed_shards_keyed

    embedder = load_embedder(args.run_dir)
    rows: list[dict[str, object]] | list[str]
    if is_complete(args.images):  # a shard directory: rows are its samples, with their labels
        emb, labels, keys = embed_shards_keyed(
            embedder.model,
            args.images,
            embedder.config.data.decode_size,
            embedder.config.eval.batch_size,
            embedder.device,
            channels=embedder.config.data.channels,
            progress=True,
        )
        rows = [{"key": k, "label": int(y)} for k, y in zip(keys, labels, strict=True)]
    else:
        emb, files = embedder.embed_folder(args.images, progress=True)
        rows = [str(p) for p in files]
    out = Path(args.out)
    np.save(out, emb.astype(np.float32))
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(f"embed: {emb.shape[0]} x {emb.shape[1]} embeddings -> {out} (rows listed in {out.with_suffix('.json')})")
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.format == "procedural":
        from dml_dist.config.loader import load_config
        from dml_dist.data.datasets import ensure_procedural

        config = load_config(args.src)
        root = ensure_procedural(config.data.procedural, out, args.samples_per_shard)
        print(f"shards: procedural set in {root}/train and {root}/test")
        return 0
    from dml_dist.data.formats import write_dataset

    for split in write_dataset(args.format, args.src, out, args.samples_per_shard, holdout=args.holdout):
        state = "written" if split["written"] else "already complete, skipped"
        bad = split.get("num_bad_files", 0)
        skipped = f", {bad} bad file{'s' if bad != 1 else ''} skipped (listed in its manifest.json)" if bad else ""
        print(
            f"shards: {split['split']}: {split['num_samples']} images of {split['num_classes']} classes "
            f"-> {split['directory']} ({state}){skipped}"
        )
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from dml_dist.config.describe import show_config
    from dml_dist.config.loader import load_config, resolve_config_path

    config = load_config(args.config, list(args.set))
    source = str(resolve_config_path(args.config)) if args.config else "the built-in defaults"
    if args.set:
        source += " with " + " ".join(f"--set {item}" for item in args.set)
    print(show_config(config, source), end="")
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    from dml_dist.config.describe import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    report = run_bench_suite(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def run_bench_suite(args: argparse.Namespace) -> dict:
    """Run one suite; each prints its table and returns its figures."""
    if args.suite == "losses":
        from dml_dist.bench.losses import run_loss_bench

        memory_sizes = [int(s) for s in args.memory_sizes.split(",") if s.strip()]
        return run_loss_bench([int(s) for s in args.sizes.split(",")], args.repeats, memory_sizes)
    if args.suite == "scaling":
        from dml_dist.bench.scaling import run_scaling_bench

        return run_scaling_bench(chunk_size=args.chunk_size)
    if args.suite == "reproduce":
        from dml_dist.bench.reproduce import run_reproduction

        return run_reproduction(
            args.out, quick=args.quick, only=args.only, steps=args.steps, n=args.n, n_sweep=args.n_sweep
        )
    if args.suite == "peers":
        from dml_dist.bench.peers import run_peers_bench

        return run_peers_bench(
            args.config, args.set, data=args.data, eval_data=args.eval_data, steps=args.steps, n=args.n,
            seeds=[int(s) for s in args.seeds.split(",")], quick=args.quick, peer_lr=args.peer_lr,
            runs=Path(args.runs) if args.runs else None, backbones=tuple(args.backbones.split(",")),
        )  # fmt: skip
    if args.suite == "mining":
        from dml_dist.bench.mining import run_mining_bench

        return run_mining_bench(num_classes=args.classes)
    from dml_dist.bench.data import run_data_bench

    return run_data_bench(args.images, num_workers=args.loader_workers)


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


if __name__ == "__main__":
    sys.exit(main())
