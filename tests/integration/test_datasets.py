"""``dml-dist datasets``: tiny versions of the real sets, built from Debian's font and icon
packages (``.ci/run`` installs them: ``make dataset-packages``), split by class, rebuilt byte for
byte, and trained on through the real CLI (Ray, 2 gloo workers, faiss evaluation)."""

from __future__ import annotations

import io
import json
import subprocess
import unicodedata
from pathlib import Path

import pytest
import yaml
from PIL import Image

from dml_dist.cli import main
from dml_dist.data.shard_index import IndexedShards
from dml_dist.data.shard_layout import read_manifest
from dml_dist.data.sources import SETS, all_packages
from tests.conftest import REPO

NAMES = sorted(SETS)
# (mode, side) of every image of each set.
IMAGE_MODES = {"typefaces": ("L", 32), "symbols": ("L", 32), "icons": ("RGB", 64)}


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("datasets")
    for name in NAMES:
        assert main(["datasets", name, str(root / name), "--tiny"]) == 0
    return {name: root / name for name in NAMES}


def test_makefile_lists_every_package_the_builders_read() -> None:
    """``.ci/run`` installs ``make dataset-packages``: it must name what every builder reads."""
    listed = subprocess.run(
        ["make", "-s", "--no-print-directory", "dataset-packages"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(listed) == all_packages()


def test_a_missing_package_is_named_with_its_install_line() -> None:
    from dml_dist.data.sources.debian import installed_versions

    with pytest.raises(ValueError, match=r"not installed: fonts-no-such-face \(apt-get install fonts-no-such-face"):
        installed_versions("typefaces", ["fonts-dejavu-core", "fonts-no-such-face"])


@pytest.mark.parametrize("name", NAMES)
def test_tiny_set_is_split_by_class_with_styles(tiny_sets: dict[str, Path], name: str) -> None:
    train, test = (IndexedShards(tiny_sets[name] / split) for split in ("train", "test"))
    assert 20 <= train.num_classes + test.num_classes <= 40
    assert not set(train.labels) & set(test.labels)
    names = [read_manifest(tiny_sets[name] / split)["class_names"] for split in ("train", "test")]
    assert not set(names[0].values()) & set(names[1].values())
    mode, side = IMAGE_MODES[name]
    for shards in (train, test):
        manifest = read_manifest(shards.directory)
        styles = manifest["source"]["styles"]
        keys = [key for key_list in styles.values() for key in key_list]
        assert len(keys) == len(set(keys)) == manifest["num_samples"]  # every image has one style
        assert len(styles) >= 3
        assert min(shards.class_sizes()) >= 3
        image = Image.open(io.BytesIO(shards.read(0, 0)))
        assert (image.mode, image.size) == (mode, (side, side))


def test_no_cjk_character_is_a_candidate_of_the_font_sets() -> None:
    """Over every face the full builds read, by width and name (not the builders' own ranges)."""
    from dml_dist.data.sources import symbols, typefaces
    from dml_dist.data.sources.fonts import package_faces
    from dml_dist.data.sources.glyphs import mapped_candidates

    faces = package_faces(tuple(symbols.PACKAGES))
    assert any(0x4E00 <= c <= 0x9FFF or 0x3040 <= c <= 0x30FF for face in faces for c in face.codepoints), (
        "no face maps any CJK character: the check below would prove nothing"
    )
    for module in (typefaces, symbols):
        candidates = mapped_candidates(faces, module.is_candidate, 1)
        assert len(candidates) > 1000
        for codepoint in candidates:
            char = chr(codepoint)
            name = unicodedata.name(char)
            assert not any(word in name for word in ("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "BOPOMOFO")), name
            if module is typefaces:
                assert unicodedata.east_asian_width(char) not in ("W", "F"), name


@pytest.mark.parametrize("name", NAMES)
def test_rebuilding_gives_identical_shard_sets(tiny_sets: dict[str, Path], name: str, tmp_path: Path) -> None:
    assert main(["datasets", name, str(tmp_path / name), "--tiny"]) == 0
    for split in ("train", "test"):
        first, second = tiny_sets[name] / split, tmp_path / name / split
        files = sorted(p.name for p in first.iterdir())
        assert files == sorted(p.name for p in second.iterdir())
        for file in files:
            assert (first / file).read_bytes() == (second / file).read_bytes(), f"{split}/{file} differs"


# Per set: the settings of a tiny run (grayscale sets keep the Omniglot config's small CNN).
TRAIN_SETTINGS = {
    "typefaces": {"data.image_size": 32},
    "symbols": {"data.image_size": 32},
    "icons": {"data.image_size": 64, "data.channels": 3, "model.in_channels": 3},
}


@pytest.mark.parametrize("name", NAMES)
def test_tiny_set_trains_through_the_cli(ray_session, tiny_sets: dict[str, Path], name: str, tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "configs" / "omniglot.yaml").read_text())
    config["batch"].update(num_classes=8, images_per_class=2)
    config["metrics"]["enabled"] = False
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(config))
    settings = {**TRAIN_SETTINGS[name], "train.eval_every": 0, "train.log_every": 5, "data.augment": "none"}
    run_dir = tmp_path / "run"
    args = ["train", str(config_path), "--run-dir", str(run_dir), "--workers", "2", "--steps", "10"]
    args += ["--data", str(tiny_sets[name])]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    assert main(args) == 0
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["step"] == 10
    assert result["num_classes"] == IndexedShards(tiny_sets[name] / "test").num_classes
    recall = result["recall"]["1"]
    cross = result["metrics"]["extra"]["cross_style_recall_1"]  # the manifest's styles reach the evaluation
    print(
        f"{name}: held-out Recall@1 {recall:.3f} (untrained {result['untrained_recall']['1']:.3f}), cross-style {cross:.3f}"
    )
    assert 0.0 < recall <= 1.0 and 0.0 <= cross <= 1.0 and result["metrics"]["extra"]["cross_style_queries"] > 0
