"""``dml-dist eval`` (held-out retrieval of a trained run) and ``dml-dist embed`` (embeddings of
a folder of images or a shard directory with a trained run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dml_dist.cli.parser import Commands


def register(commands: Commands) -> None:
    evaluate = commands.add("eval", "held-out retrieval of a trained run")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--data", help="shard directory to evaluate on (default: the run's eval data)")
    evaluate.add_argument("--json", help="also write the figures to this JSON file")
    evaluate.add_argument(
        "--protocol", choices=["cub200", "cars196", "sop", "inshop"], help="the data set's K list (eval.protocol)"
    )
    evaluate.set_defaults(func=cmd_eval)

    embed = commands.add("embed", "embed a folder of images with a trained run")
    embed.add_argument("run_dir")
    embed.add_argument("--images", required=True, help="folder of images (searched recursively) or a shard directory")
    embed.add_argument("--out", required=True, help="output .npy (float32 [n, d]); FILE.json lists the images")
    embed.set_defaults(func=cmd_embed)


def cmd_eval(args: argparse.Namespace) -> int:
    from dml_dist.train.preflight import check_faiss

    check_faiss()  # retrieval is faiss's: a plain install without it fails here, in one line
    from dml_dist.config.loader import replaced
    from dml_dist.data.datasets import resolve_data
    from dml_dist.eval.api import load_embedder
    from dml_dist.eval.gallery import write_run_gallery
    from dml_dist.eval.heldout import evaluate_shards
    from dml_dist.eval.retrieval import format_report_table

    embedder = load_embedder(args.run_dir)
    config = embedder.config
    if args.protocol:
        config = replaced(config, {"eval.protocol": args.protocol})
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
    gallery = write_run_gallery(args.run_dir, held, data, config)
    if gallery is not None:
        print(f"retrieval gallery: {gallery}")
    if args.json:
        Path(args.json).write_text(json.dumps({**report.to_json(), "data": str(data)}, indent=2))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from dml_dist.data.shard_layout import class_caption, is_complete, read_class_names
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
            interpolation=embedder.config.data.resize_filter,
        )
        names = read_class_names(args.images)  # each row names its class where the shards have names
        rows = [
            {"key": k, "label": int(y), "class": class_caption(names, int(y))}
            for k, y in zip(keys, labels, strict=True)
        ]
    else:
        emb, files = embedder.embed_folder(args.images, progress=True)
        rows = [str(p) for p in files]
    out = Path(args.out)
    np.save(out, emb.astype(np.float32))
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(f"embed: {emb.shape[0]} x {emb.shape[1]} embeddings -> {out} (rows listed in {out.with_suffix('.json')})")
    return 0
