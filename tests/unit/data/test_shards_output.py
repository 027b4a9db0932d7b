"""``dml-dist shards SRC OUT`` writes only into a new or empty OUT, or over a shard set it wrote
itself; it never deletes what it did not write, and it keeps each class's name (issue 25 item 1,
issue 26 item 6). Through the real CLI, with real images and tars."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dml_dist.cli import main
from dml_dist.data.shard_layout import read_class_names, read_manifest


def _image_folder(root: Path, classes: list[str], per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(buffer, format="PNG")
            (root / name / f"{i}.png").write_bytes(buffer.getvalue())
    return root


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("holdout", ["0", "0.5"])
def test_shards_into_a_folder_holding_other_files_is_refused_and_they_stay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], holdout: str
) -> None:
    src = _image_folder(tmp_path / "src", ["a", "b"])
    out = tmp_path / "out"
    (out / "other").mkdir(parents=True)
    (out / "thesis.tex").write_text("\\documentclass{article}")
    (out / "other" / "notes.txt").write_text("mine")
    before = _tree(out)
    assert main(["shards", str(src), str(out), "--holdout", holdout]) == 2
    line = _error_line(capsys)
    assert str(out) in line and "holds files that dml-dist shards did not write" in line and "thesis.tex" in line
    assert _tree(out) == before and sorted(p.name for p in out.iterdir()) == ["other", "thesis.tex"]


def test_shards_into_the_source_is_refused_and_the_source_stays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _image_folder(tmp_path / "src", ["a", "b"])
    before = _tree(src)
    for out in (src, src / "shards"):
        assert main(["shards", str(src), str(out), "--holdout", "0"]) == 2
        assert f"shards: OUT {out} is the source {src} or inside it" in _error_line(capsys)
    assert _tree(src) == before


def test_a_set_it_wrote_is_rewritten_and_nothing_else_is_touched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _image_folder(tmp_path / "src", ["Latin/character03", "Greek/alpha", "Greek/beta"])
    out = tmp_path / "out"
    assert main(["shards", str(src), str(out), "--holdout", "0", "--samples-per-shard", "100"]) == 0
    assert read_manifest(out)["num_shards"] == 1
    # Other input (a shard size that changes the output): the set it wrote is replaced.
    assert main(["shards", str(src), str(out), "--holdout", "0", "--samples-per-shard", "3"]) == 0
    assert read_manifest(out)["num_shards"] == 3 and "(written)" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.lock", "src"]  # no set left aside
    # Each class keeps its folder path as its name (labels follow the sorted paths).
    assert read_class_names(out) == {0: "Greek/alpha", 1: "Greek/beta", 2: "Latin/character03"}
    # A file that it did not write, put into its set, makes the set no longer its own.
    (out / "README").write_text("mine")
    assert main(["shards", str(src), str(out), "--holdout", "0", "--samples-per-shard", "100"]) == 2
    assert "README" in _error_line(capsys)
    assert (out / "README").read_text() == "mine" and read_manifest(out)["num_shards"] == 3
    # A split source writes OUT/train and OUT/test, and rewrites them the same way.
    split = tmp_path / "split"
    for size in ("100", "2"):
        assert main(["shards", str(src), str(split), "--holdout", "0.34", "--samples-per-shard", size]) == 0
    assert read_class_names(split / "test") == {2: "Latin/character03"}
    assert sorted(p.name for p in split.iterdir()) == ["test", "test.lock", "train", "train.lock"]
