"""``dml-dist shards``: WebDataset shards, a class index and a manifest from images (or the
procedural set of a config)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
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
    from dml_dist.data.shard_output import check_writable

    out = Path(args.out)
    check_not_inside_source(Path(args.src), out)
    if args.format == "procedural":
        from dml_dist.config.loader import load_config
        from dml_dist.data.datasets import ensure_procedural

        config = load_config(args.src)
        check_only_sets(out, lambda name: name.startswith("procedural-"))  # OUT is a cache of generated sets
        root = ensure_procedural(config.data.procedural, out, args.samples_per_shard)
        print(f"shards: procedural set in {root}/train and {root}/test")
        return 0
    from dml_dist.data.formats import write_dataset

    if args.format == "folder" and args.holdout == 0:
        check_writable(out)  # OUT itself is the shard set
    else:
        check_only_sets(out, lambda name: name in SET_ENTRIES)
    for split in write_dataset(args.format, args.src, out, args.samples_per_shard, holdout=args.holdout):
        state = "written" if split["written"] else "already complete, skipped"
        bad = split.get("num_bad_files", 0)
        skipped = f", {bad} bad file{'s' if bad != 1 else ''} skipped (listed in its manifest.json)" if bad else ""
        print(
            f"shards: {split['split']}: {split['num_samples']} images of {split['num_classes']} classes "
            f"-> {split['directory']} ({state}){skipped}"
        )
    return 0


SET_ENTRIES = {split + suffix for split in ("train", "test") for suffix in ("", ".lock", ".partial", ".replaced")}
"""What ``dml-dist shards`` writes in OUT for a split source: each split's set and its companions."""


def check_not_inside_source(src: Path, out: Path) -> None:
    """OUT equal to SRC or inside it is refused: the output must never mix with (or replace) the input."""
    source, target = src.resolve(), out.resolve()
    if source.is_dir() and (target == source or source in target.parents):
        raise ValueError(f"shards: OUT {out} is the source {src} or inside it; choose an output directory outside it")


def check_only_sets(out: Path, is_set: Callable[[str], bool]) -> None:
    """OUT must be new, empty, or hold only shard sets (and their ``.lock``/``.partial``
    companions) that ``dml-dist shards`` writes there; each set is checked again as it is written."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"shards: OUT {out} is a file; choose a new or empty output directory")
    foreign = sorted(p.name for p in out.iterdir() if not is_set(p.name))
    if foreign:
        named = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ValueError(
            f"shards: OUT {out} holds files that dml-dist shards did not write ({named}); nothing was written: "
            "choose a new or empty output directory"
        )
