"""The Omniglot images of the bench suites: where the zip is, and its alphabet split as shards.

``dml-dist bench reproduce`` (its ``omniglot`` group), ``bench peers --data omniglot`` and
``bench data`` read a zip of Omniglot drawings (Lake et al. 2015; ``images_background_small1.zip``
holds 5 alphabets, a folder per alphabet and a folder per character). Its place is given with
``--omniglot PATH`` or, when the option is absent, the environment variable ``DML_DIST_OMNIGLOT``;
nothing is looked up elsewhere.

The split: train on Balinese, Early_Aramaic and Greek (70 characters), evaluate on Korean and
Latin (66 characters never seen in training).
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

OMNIGLOT_ENV = "DML_DIST_OMNIGLOT"
TRAIN_ALPHABETS = ("Balinese", "Early_Aramaic", "Greek")
EVAL_ALPHABETS = ("Korean", "Latin")


def omniglot_zip(path: str | Path | None) -> Path | None:
    """``path`` (``--omniglot``), else ``$DML_DIST_OMNIGLOT``, else None; a given path must be a file."""
    given = path if path is not None else os.environ.get(OMNIGLOT_ENV) or None
    if given is None:
        return None
    zip_path = Path(given)
    if not zip_path.is_file():
        source = "--omniglot" if path is not None else OMNIGLOT_ENV
        raise ValueError(f"{source}: {zip_path} is not a file (expected images_background_small1.zip)")
    return zip_path


def require_omniglot(path: str | Path | None, what: str) -> Path:
    """The zip of ``omniglot_zip``; a ``ValueError`` naming the option when none is given."""
    zip_path = omniglot_zip(path)
    if zip_path is None:
        raise ValueError(
            f"{what} needs the Omniglot images: pass --omniglot PATH/images_background_small1.zip or set {OMNIGLOT_ENV}"
        )
    return zip_path


def prepare_omniglot(zip_path: Path, cache: Path) -> tuple[Path, Path]:
    """(train shards, eval shards) split by alphabet, written once under ``cache``."""
    from dml_dist.data.formats import write_dataset
    from dml_dist.data.shard_layout import is_complete

    train, evaluation = cache / "omniglot-shards" / "train", cache / "omniglot-shards" / "eval"
    if is_complete(train) and is_complete(evaluation):
        return train, evaluation
    unzipped = cache / "omniglot-src"
    if unzipped.exists():
        shutil.rmtree(unzipped)
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(unzipped / "all")
    folders = [p for p in (unzipped / "all").iterdir() if p.is_dir()]
    root = folders[0] if len(folders) == 1 else unzipped / "all"  # the alphabets, or one folder holding them
    for split, alphabets in (("train", TRAIN_ALPHABETS), ("eval", EVAL_ALPHABETS)):
        for alphabet in alphabets:
            (unzipped / split).mkdir(parents=True, exist_ok=True)
            shutil.move(str(root / alphabet), str(unzipped / split / alphabet))
    write_dataset("folder", unzipped / "train", train, 1000, holdout=0.0)
    write_dataset("folder", unzipped / "eval", evaluation, 1000, holdout=0.0)
    return train, evaluation
