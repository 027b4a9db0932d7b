"""The ``dml-dist`` command line: train | eval | embed | shards | bench | submit.

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
    try:
        return int(args.func(args) or 0)
    except ValueError as err:
        print(f"dml-dist: error: {err}", file=sys.stderr)
        return 2


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
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("eval", help="held-out retrieval of a trained run")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--data", help="shard directory to evaluate on (default: the run's eval data)")
    evaluate.add_argument("--json", help="also write the figures to this JSON file")
    evaluate.set_defaults(func=cmd_eval)

    embed = sub.add_parser("embed", help="embed a folder of images with a trained run")
    embed.add_argument("run_dir")
    embed.add_argument("--images", required=True, help="folder of images (searched recursively)")
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
    bench.add_argument("suite", choices=["losses", "scaling", "mining", "data"])
    bench.add_argument("--json", help="also write the figures to this JSON file")
    bench.add_argument("--sizes", default="128,320,1000", help="losses: comma-separated N")
    bench.add_argument("--repeats", type=int, default=7, help="losses: timed repeats per case")
    bench.add_argument("--chunk-size", type=int, default=100, help="scaling: GradCache chunk of the chunked case")
    bench.add_argument("--images", help="data: image folder or .zip (default: the Omniglot zip, else procedural)")
    bench.add_argument("--loader-workers", type=int, default=0, help="data: DataLoader workers (0 = in-process)")
    bench.add_argument("--classes", type=int, default=100_000, help="mining: C classes to select from")
    bench.set_defaults(func=cmd_bench)

    for name in ("submit", "jobs"):
        later = sub.add_parser(name, help="not available yet")
        later.add_argument("rest", nargs="*")
        later.set_defaults(func=cmd_not_yet)
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
    result = run_training(config, run_dir, address=args.address)
    recall = {int(k): v for k, v in result["recall"].items()}
    untrained = {int(k): v for k, v in result["untrained_recall"].items()}
    print(f"\nheld-out retrieval ({result['num_queries']} images of {result['num_classes']} unseen classes):")
    print(format_recall_table({"untrained": untrained, f"step {result['step']}": recall}))
    print(f"train time {result['train_seconds']:.0f} s; run directory {run_dir.resolve()}")
    return 0


def _load_run(run_dir: str):  # type: ignore[no-untyped-def]
    import torch

    from dml_dist.config.loader import load_config
    from dml_dist.models import build_model
    from dml_dist.train import run_files

    root = Path(run_dir)
    config = load_config(root / run_files.CONFIG)
    state = run_files.load_embedder_state(root / run_files.EMBEDDER)
    model = build_model(config.model)
    model.load_state_dict(state["model"])
    return config, model.eval(), torch.device("cpu")


def cmd_eval(args: argparse.Namespace) -> int:
    from dml_dist.data.datasets import resolve_data
    from dml_dist.eval.embed import embed_shards
    from dml_dist.eval.retrieval import format_recall_table, recall_at_k

    config, model, device = _load_run(args.run_dir)
    data = Path(args.data) if args.data else resolve_data(config.data).eval
    emb, labels = embed_shards(
        model, data, config.data.decode_size, config.eval.batch_size, device, channels=config.data.channels
    )
    recall = recall_at_k(emb, labels, config.eval.recall_at)
    print(format_recall_table({Path(args.run_dir).name: recall}))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"recall": {str(k): v for k, v in recall.items()}, "data": str(data)}, indent=2)
        )
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from dml_dist.eval.embed import embed_encoded, list_images

    config, model, device = _load_run(args.run_dir)
    files = list_images(args.images)
    if not files:
        raise ValueError(f"--images: no images found under {args.images}")
    emb = embed_encoded(
        model,
        (p.read_bytes() for p in files),
        config.data.decode_size,
        config.eval.batch_size,
        device,
        channels=config.data.channels,
    )
    out = Path(args.out)
    np.save(out, emb.astype(np.float32))
    out.with_suffix(".json").write_text(json.dumps([str(p) for p in files], indent=1))
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

        return run_loss_bench([int(s) for s in args.sizes.split(",")], repeats=args.repeats)
    if args.suite == "scaling":
        from dml_dist.bench.scaling import run_scaling_bench

        return run_scaling_bench(chunk_size=args.chunk_size)
    if args.suite == "mining":
        from dml_dist.bench.mining import run_mining_bench

        return run_mining_bench(num_classes=args.classes)
    from dml_dist.bench.data import run_data_bench

    return run_data_bench(args.images, num_workers=args.loader_workers)


def cmd_not_yet(args: argparse.Namespace) -> int:
    print(f"dml-dist {args.command}: not available yet (see the cluster operations issue)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
