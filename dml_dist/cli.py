"""The ``dml-dist`` command line: train | eval | embed | shards | bench | submit | jobs.

Flags override the YAML config (``--steps 100`` is ``--set train.steps=100``); every user error
is reported as one line naming the field or file, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from dml_dist.train.errors import TrainingStopped

    try:
        return int(args.func(args) or 0)
    except ValueError as err:
        print(f"dml-dist: error: {err}", file=sys.stderr)
        return 2
    except TrainingStopped as err:
        print(f"dml-dist: training stopped: {err}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dml-dist", description="Distributed large-batch deep metric learning.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model on a Ray cluster (local by default)")
    train.add_argument("config", help="experiment YAML, e.g. configs/quickstart.yaml")
    train.add_argument("--run-dir", default=None, help="run directory (default runs/<config name>)")
    train.add_argument("--address", default=None, help="Ray cluster address to join (default: start a local one)")
    train.add_argument("--workers", type=int, help="Ray Train workers (train.workers)")
    train.add_argument("--steps", type=int, help="optimizer steps (train.steps)")
    train.add_argument("--seed", type=int, help="seed (train.seed)")
    train.add_argument("--data", help="training shard directory (data.train_shards)")
    train.add_argument("--eval-data", help="held-out shard directory (data.eval_shards)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("eval", help="held-out retrieval of a trained run")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--data", help="shard directory to evaluate on (default: the run's eval data)")
    evaluate.add_argument("--json", help="also write the figures to this JSON file")
    evaluate.add_argument(
        "--protocol", choices=["cub200", "cars196", "sop", "inshop"], help="the data set's K list (eval.protocol)"
    )
    evaluate.set_defaults(func=cmd_eval)

    embed = sub.add_parser("embed", help="embed a folder of images with a trained run")
    embed.add_argument("run_dir")
    embed.add_argument("--images", required=True, help="folder of images (searched recursively) or a shard directory")
    embed.add_argument("--out", required=True, help="output .npy (float32 [n, d]); FILE.json lists the images")
    embed.set_defaults(func=cmd_embed)

    shards = sub.add_parser("shards", help="write WebDataset shards, a class index and a manifest")
    shards.add_argument(
        "src",
        help="image folder (a leaf folder per class), a data set root for cub200/cars196/sop/inshop, "
        "or a config YAML for --format procedural",
    )
    shards.add_argument("out", help="output directory (OUT/train and OUT/test when the source is split)")
    shards.add_argument(
        "--format", choices=["folder", "cub200", "cars196", "sop", "inshop", "procedural"], default="folder"
    )
    shards.add_argument("--samples-per-shard", type=int, default=2000)
    shards.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="folder format: share of the (sorted) classes held out as OUT/test; 0 = write OUT as one set",
    )
    shards.set_defaults(func=cmd_shards)

    bench = sub.add_parser("bench", help="benchmark suites")
    bench.add_argument("suite", choices=["losses", "scaling", "mining", "data", "reproduce"])
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
    bench.add_argument("--quick", action="store_true", help="reproduce: the tiny scale (minutes), not the full one")
    bench.add_argument("--only", help="reproduce: comma-separated groups (losses,n,omniglot); default all")
    bench.add_argument("--out", default="docs/results", help="reproduce: where results.md and the plots go")
    bench.add_argument("--steps", type=int, help="reproduce: steps of every run (default: the scale's)")
    bench.add_argument("--n", type=int, help="reproduce: N of the procedural loss comparison (default 128)")
    bench.add_argument("--n-sweep", help="reproduce: the N of the sweep, comma-separated (default 64,...,1000)")
    bench.set_defaults(func=cmd_bench)

    submit = sub.add_parser("submit", help="submit a training job to a Ray cluster (Ray Jobs)")
    submit.add_argument("config", help="experiment YAML inside --working-dir")
    submit.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://HEAD:8265")
    submit.add_argument("--working-dir", default=".", help="directory shipped to the cluster (default: .)")
    submit.add_argument("--run-dir", default=None, help="run directory on the cluster (default runs/<config name>)")
    submit.add_argument("--workers", type=int, help="Ray Train workers (train.workers)")
    submit.add_argument("--steps", type=int, help="optimizer steps (train.steps)")
    submit.add_argument("--pip", action="append", default=[], help="extra pip package for the job's environment")
    submit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    submit.add_argument("--no-wait", action="store_true", help="print the job id and return")
    submit.set_defaults(func=cmd_submit)

    jobs = sub.add_parser("jobs", help="list, inspect, follow or stop Ray jobs")
    jobs.add_argument("action", choices=["list", "status", "logs", "stop"])
    jobs.add_argument("job_id", nargs="?", help="job id (all but list)")
    jobs.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://HEAD:8265")
    jobs.add_argument("--follow", action="store_true", help="logs: keep printing until the job ends")
    jobs.set_defaults(func=cmd_jobs)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from dml_dist.config.loader import load_config
    from dml_dist.eval.retrieval import format_recall_table
    from dml_dist.train.launcher import run_training

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
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    result = run_training(config, run_dir, address=args.address, resume=args.resume)
    recall = {int(k): v for k, v in result["recall"].items()}
    untrained = {int(k): v for k, v in result["untrained_recall"].items()}
    print(f"\nheld-out retrieval ({result['num_queries']} images of {result['num_classes']} unseen classes):")
    print(format_recall_table({"untrained": untrained, f"step {result['step']}": recall}))
    print(f"train time {result['train_seconds']:.0f} s; run directory {run_dir.resolve()}")
    return 0


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
    held = evaluate_shards(embedder.model, data, config.data, config.eval, embedder.device, seed=config.train.seed)
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
        )
        rows = [{"key": k, "label": int(y)} for k, y in zip(keys, labels, strict=True)]
    else:
        emb, files = embedder.embed_folder(args.images)
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
        print(
            f"shards: {split['split']}: {split['num_samples']} images of {split['num_classes']} classes "
            f"-> {split['directory']} ({state})"
        )
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
    if args.suite == "mining":
        from dml_dist.bench.mining import run_mining_bench

        return run_mining_bench(num_classes=args.classes)
    from dml_dist.bench.data import run_data_bench

    return run_data_bench(args.images, num_workers=args.loader_workers)


def cmd_submit(args: argparse.Namespace) -> int:
    from dml_dist import jobs

    run_dir = args.run_dir or str(Path("runs") / Path(args.config).stem)
    job_id = jobs.submit(
        args.config, args.address, args.working_dir, run_dir, args.set, args.workers, args.steps, args.pip
    )
    print(f"submitted job {job_id}; dashboard {args.address}; run directory {run_dir} (on the cluster)")
    if args.no_wait:
        return 0
    status = jobs.follow(args.address, job_id)
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    from dml_dist import jobs

    if args.action == "list":
        for job in jobs.list_jobs(args.address):
            print(f"{job['id']:<36} {job['status']:<10} {job['entrypoint']}")
        return 0
    if not args.job_id:
        raise ValueError(f"jobs {args.action}: a job id is required")
    if args.action == "status":
        print(jobs.status(args.address, args.job_id))
    elif args.action == "logs":
        if args.follow:
            print(f"job {args.job_id}: {jobs.follow(args.address, args.job_id)}")
        else:
            print(jobs.logs(args.address, args.job_id), end="")
    else:
        print(f"stop requested: {jobs.stop(args.address, args.job_id)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
