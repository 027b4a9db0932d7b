"""``dml-dist shards``: WebDataset shards, a class index and a manifest from images (or the
procedural set of a config)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dml_dist.cli.parser import Commands


def register(commands: Commands) -> None:
    shards = commands.add(
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
