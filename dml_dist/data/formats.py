"""Source formats of ``dml-dist shards``: an image folder and the four standard DML benchmarks.

Each converter reads the data set's own list files and returns its splits as (label, image path)
lists, with the class splits of the papers (zero-shot: train and test classes are disjoint):

- ``folder``: every leaf folder is a class (nested allowed); the last ``holdout`` share of the
  sorted class folders is held out as ``test`` (0 = one shard set, no split).
- ``cub200`` (CUB-200-2011: ``images.txt``, ``image_class_labels.txt``, ``images/``): classes
  1-100 train, 101-200 test (Oh Song et al. 2016, and the DML literature since).
- ``cars196`` (Stanford Cars: ``cars_annos.mat`` with ``relative_im_path`` and ``class``):
  classes 1-98 train, 99-196 test.
- ``sop`` (Stanford Online Products: ``Ebay_train.txt``, ``Ebay_test.txt``): the files' own
  split, 11,318 train and 11,316 test products.
- ``inshop`` (DeepFashion In-Shop: ``list_eval_partition.txt``, in the root or ``Eval/``): items
  with status ``train`` train; ``query`` and ``gallery`` images form the test set, and the
  manifest's ``source.roles`` lists the keys of each so query-vs-gallery retrieval can be run.

``write_dataset`` writes each split as a shard directory (``OUT/train``, ``OUT/test``, or ``OUT``
itself for an unsplit folder) through the resumable ``write_shards``, with a progress bar.
Every image is decoded on the way (``images.image_problem``): a file that fails is named on the
console with its reason, left out, and listed in the split's manifest; the rest is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dml_dist.data.folder import file_samples, folder_classes
from dml_dist.data.images import image_problem
from dml_dist.data.shard_layout import read_manifest
from dml_dist.data.shard_writer import Sample, write_shards
from dml_dist.observability.progress import progress_bar

FORMATS = ("folder", "cub200", "cars196", "sop", "inshop", "procedural")


@dataclass
class Split:
    """One split of a converted data set."""

    items: list[tuple[int, Path]]
    """(label, image file) of every image."""
    names: dict[int, str] = field(default_factory=dict)
    """Human-readable class name of each label, when the source has one."""
    roles: dict[str, str] = field(default_factory=dict)
    """In-Shop only: image path -> ``query`` or ``gallery``."""


def convert(fmt: str, src: str | Path, holdout: float = 0.2) -> dict[str, Split]:
    """Split name (``train``, ``test``; ``""`` for an unsplit folder) -> its images."""
    src = Path(src)
    if fmt == "folder":
        return folder_splits(src, holdout)
    converters: dict[str, Callable[[Path], dict[str, Split]]] = {
        "cub200": cub200_splits,
        "cars196": cars196_splits,
        "sop": sop_splits,
        "inshop": inshop_splits,
    }
    if fmt not in converters:
        raise ValueError(f"--format: unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if not src.is_dir():
        raise ValueError(f"shards: source folder {src} does not exist")
    return converters[fmt](src)


def folder_splits(src: Path, holdout: float) -> dict[str, Split]:
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"--holdout: expected a share in [0, 1), got {holdout}")
    classes = folder_classes(src)
    names = {label: name for label, (name, _) in enumerate(classes)}
    items = [(label, path) for label, (_, files) in enumerate(classes) for path in files]
    if holdout == 0.0:
        return {"": Split(items, names)}
    num_test = max(1, round(holdout * len(classes)))
    if num_test >= len(classes):
        raise ValueError(f"--holdout: {len(classes)} classes are too few to hold out {holdout:.0%} of them")
    first_test = len(classes) - num_test
    return {
        "train": Split(
            [(c, p) for c, p in items if c < first_test], {c: n for c, n in names.items() if c < first_test}
        ),
        "test": Split(
            [(c, p) for c, p in items if c >= first_test], {c: n for c, n in names.items() if c >= first_test}
        ),
    }


def _rows(path: Path, skip: int = 0) -> list[list[str]]:
    if not path.is_file():
        raise ValueError(f"shards: list file {path} does not exist")
    lines = path.read_text().splitlines()[skip:]
    return [line.split() for line in lines if line.strip()]


def cub200_splits(src: Path) -> dict[str, Split]:
    paths = {row[0]: row[1] for row in _rows(src / "images.txt")}
    labels = {row[0]: int(row[1]) for row in _rows(src / "image_class_labels.txt")}
    names = {int(row[0]): row[1] for row in _rows(src / "classes.txt")} if (src / "classes.txt").is_file() else {}
    items = [(labels[image_id], src / "images" / rel) for image_id, rel in paths.items()]
    return _by_class_range(items, names, last_train=100)


def cars196_splits(src: Path) -> dict[str, Split]:
    annos = src / "cars_annos.mat"
    if not annos.is_file():
        raise ValueError(f"shards: list file {annos} does not exist")
    from scipy.io import loadmat

    mat = loadmat(str(annos))
    items = [
        (int(record["class"].item()), src / str(record["relative_im_path"].item()))
        for record in mat["annotations"].ravel()
    ]
    names = (
        {i + 1: str(name.item()) for i, name in enumerate(mat["class_names"].ravel())} if "class_names" in mat else {}
    )
    return _by_class_range(items, names, last_train=98)


def _by_class_range(items: list[tuple[int, Path]], names: dict[int, str], last_train: int) -> dict[str, Split]:
    """The paper split of CUB and Cars: classes 1..last_train train, the rest test."""
    train = [(c, p) for c, p in items if c <= last_train]
    test = [(c, p) for c, p in items if c > last_train]
    return {
        "train": Split(train, {c: n for c, n in names.items() if c <= last_train}),
        "test": Split(test, {c: n for c, n in names.items() if c > last_train}),
    }


def sop_splits(src: Path) -> dict[str, Split]:
    splits: dict[str, Split] = {}
    for split, name in (("train", "Ebay_train.txt"), ("test", "Ebay_test.txt")):
        rows = _rows(src / name, skip=1)  # header: image_id class_id super_class_id path
        # A product is named by its folder and the id its images share: bicycle_final/111085122871_0.JPG
        names = {int(row[1]): f"{Path(row[3]).parent}/{Path(row[3]).stem.rpartition('_')[0]}" for row in rows}
        splits[split] = Split([(int(row[1]), src / row[3]) for row in rows], names)
    return splits


def inshop_splits(src: Path) -> dict[str, Split]:
    listing = src / "list_eval_partition.txt"
    if not listing.is_file():
        listing = src / "Eval" / "list_eval_partition.txt"
    rows = _rows(listing, skip=2)  # a count, then the header: image_name item_id evaluation_status
    train, test = Split([]), Split([])
    for image, item, status in rows:
        label = int(item.rpartition("_")[2])
        path = src / image
        folder = Path(image).parent  # an item's folder: img/WOMEN/Blouses_Shirts/id_00000001
        name = str(folder.relative_to("img")) if folder.parts[:1] == ("img",) else str(folder)
        if status == "train":
            train.items.append((label, path))
            train.names[label] = name
        elif status in ("query", "gallery"):
            test.items.append((label, path))
            test.names[label] = name
            test.roles[str(path)] = status
        else:
            raise ValueError(f"shards: {listing}: unknown evaluation status {status!r} for {image}")
    return {"train": train, "test": test}


def write_dataset(
    fmt: str, src: str | Path, out: str | Path, samples_per_shard: int, holdout: float = 0.2
) -> list[dict[str, Any]]:
    """Convert and write every split; returns one summary per split: directory, ``num_samples``
    written, ``num_classes``, ``num_bad_files`` (named in the manifest), ``written``."""
    summaries = []
    for split, data in convert(fmt, src, holdout).items():
        directory = Path(out) / split if split else Path(out)
        samples = file_samples(data.items)
        source: dict[str, Any] = {"format": fmt, "path": str(Path(src).resolve()), "split": split or "all"}
        if data.roles:
            keys = {path: s.key for path, s in zip(_sorted_paths(data.items), samples, strict=True)}
            source["roles"] = {
                role: sorted(keys[p] for p, r in data.roles.items() if r == role) for role in ("query", "gallery")
            }
        with progress_bar(len(samples), desc=f"shards {split or 'all'}", unit="img") as bar:
            final, written = write_shards(
                samples,
                directory,
                samples_per_shard,
                source,
                progress=bar.update,
                class_names=data.names,
                check=image_problem,
                on_bad=_bad_file_printer(bar),
            )
        manifest = read_manifest(final)
        summaries.append(
            {
                "split": split or "all",
                "directory": str(directory),
                "num_samples": manifest["num_samples"],
                "num_classes": manifest["num_classes"],
                "num_bad_files": manifest.get("num_bad_files", 0),
                "written": written,
            }
        )
    return summaries


def _sorted_paths(items: list[tuple[int, Path]]) -> list[str]:
    """Paths in the order ``file_samples`` assigns keys."""
    return [str(p) for _, p in sorted(items, key=lambda item: (item[0], str(item[1])))]


def _bad_file_printer(bar: Any) -> Callable[[Sample, str], None]:
    """Names each bad file on the console (above the progress bar) as it is found."""

    def report(sample: Sample, reason: str) -> None:
        bar.write(f"shards: skipped {sample.path or sample.key}: {reason}")

    return report
