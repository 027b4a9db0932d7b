"""``dml-dist shards`` decodes every image: a truncated PNG and a text file named ``.png`` are
named with their reason, left out, and counted in the manifest; nothing else is lost."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dml_dist.cli import main
from dml_dist.config import ProceduralDataConfig
from dml_dist.data.images import decode_image, image_problem
from dml_dist.data.procedural import render_png
from dml_dist.data.shard_index import IndexedShards


def image_folder(root: Path) -> tuple[Path, Path]:
    """3 classes x 4 good PNGs, plus a truncated PNG (class a) and a text file named .png (class b)."""
    config = ProceduralDataConfig()
    for c, name in enumerate("abc"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            (root / name / f"{i}.png").write_bytes(render_png(config, c, i))
    truncated, text = root / "a" / "cut.png", root / "b" / "notes.png"
    good = render_png(config, 0, 9)
    truncated.write_bytes(good[: len(good) // 2])
    text.write_text("shopping list: milk, eggs\n")
    return truncated, text


def test_bad_files_are_named_skipped_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truncated, text = image_folder(tmp_path / "src")
    out = tmp_path / "shards"
    assert main(["shards", str(tmp_path / "src"), str(out), "--holdout", "0"]) == 0
    captured = capsys.readouterr()
    assert f"shards: skipped {truncated}: cannot be decoded" in captured.err
    assert f"shards: skipped {text}: not an image" in captured.err
    assert "12 images of 3 classes" in captured.out and "2 bad files skipped" in captured.out

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == 12 and manifest["num_classes"] == 3
    assert manifest["num_bad_files"] == 2
    assert {b["path"] for b in manifest["bad_files"]} == {str(truncated), str(text)}
    assert all(b["reason"] for b in manifest["bad_files"])
    shards = IndexedShards(out)  # everything else is there and decodes
    assert shards.class_sizes() == [4, 4, 4]
    for c in range(3):
        for i in range(4):
            assert decode_image(shards.read(c, i), 32).shape == (1, 32, 32)
    assert not list(out.glob("*.bad.json"))

    # A re-run on the same input skips the work and still reports the bad files.
    assert main(["shards", str(tmp_path / "src"), str(out), "--holdout", "0"]) == 0
    assert "already complete, skipped), 2 bad files skipped" in capsys.readouterr().out


def test_image_problem_reasons() -> None:
    good = render_png(ProceduralDataConfig(), 0, 0)
    assert image_problem(good) is None
    assert image_problem(b"") == "empty file"
    assert image_problem(b"not an image") == "not an image (no image format recognised)"
    reason = image_problem(good[:-30])
    assert reason is not None and reason.startswith("cannot be decoded")
    assert np.isfinite(decode_image(good, 32)).all()
