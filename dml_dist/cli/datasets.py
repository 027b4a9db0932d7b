"""``dml-dist datasets NAME OUT``: build a real data set from Debian packages as a shard set with
a train/held-out split by class (``OUT/train``, ``OUT/test``); ``dml_dist/data/sources``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dml_dist.cli.parser import Commands


def register(commands: Commands) -> None:
    from dml_dist.data.sources import SETS

    datasets = commands.add(
        "datasets",
        "build a real data set from Debian font and icon packages as shards with a train/held-out "
        "split by class (docs/datasets.md); a complete OUT of the same build is kept as it is",
    )
    datasets.add_argument(
        "name",
        metavar="NAME",
        choices=sorted(SETS),
        help="; ".join(f"{name}: {module.SUMMARY}" for name, module in sorted(SETS.items())),
    )
    datasets.add_argument("out", metavar="OUT", help="output directory (OUT/train and OUT/test), e.g. data/cache/NAME")
    datasets.add_argument("--tiny", action="store_true", help="a few dozen classes from a few packages, for tests")
    datasets.add_argument("--holdout", type=float, default=0.25, help="share of the classes held out as OUT/test")
    datasets.add_argument("--seed", type=int, default=0, help="seed of the class split (and of the tiny choice)")
    datasets.add_argument("--image-size", type=int, default=None, help="image side in pixels (default: the set's)")
    datasets.add_argument("--samples-per-shard", type=int, default=2000, help="images per tar shard")
    datasets.set_defaults(func=cmd_datasets)


def cmd_datasets(args: argparse.Namespace) -> int:
    from dml_dist.data.sources import SETS
    from dml_dist.data.sources.debian import installed_versions
    from dml_dist.data.sources.writing import BuildSettings, check_holdout, is_cached, write_set

    module = SETS[args.name]
    image_size = module.DEFAULT_IMAGE_SIZE if args.image_size is None else args.image_size
    if image_size < 8:
        raise ValueError(f"--image-size: expected at least 8 pixels, got {image_size}")
    check_holdout(args.holdout)
    settings = BuildSettings(args.name, args.tiny, image_size, args.seed, args.holdout, module.GENERATOR_VERSION)
    out = Path(args.out)
    build = settings.as_dict(installed_versions(args.name, module.packages(args.tiny)))
    if is_cached(out, build):
        print(f"datasets: {out} already holds this build of {args.name}; nothing to do")
        return 0
    started = time.monotonic()
    built = module.build(settings)
    for split in write_set(built, out, args.samples_per_shard):
        state = "written" if split["written"] else "already complete, skipped"
        print(
            f"datasets: {args.name} {split['split']}: {split['num_samples']} images of {split['num_classes']} "
            f"classes in {split['num_styles']} styles -> {split['directory']} ({state})"
        )
    print(f"datasets: {args.name} built in {time.monotonic() - started:.1f} s")
    return 0
