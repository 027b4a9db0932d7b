"""Shards, class index, loaders and bad data: written and read in tmp dirs with tiny images."""

from __future__ import annotations

import functools
import io
import logging
import multiprocessing
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dml_dist.cli import main
from dml_dist.config import DataConfig
from dml_dist.config.loader import load_config
from dml_dist.data.datasets import resolve_data
from dml_dist.data.decode_spec import DecodeSpec
from dml_dist.data.folder import file_samples
from dml_dist.data.formats import convert, write_dataset
from dml_dist.data.images import decode_batch, decode_image
from dml_dist.data.indexed_loader import ClassBatchLoader
from dml_dist.data.shard_index import IndexedShards
from dml_dist.data.shard_layout import is_complete, read_manifest
from dml_dist.data.shard_writer import Sample, write_shards
from dml_dist.data.stream_loader import StreamingClassLoader
from dml_dist.data.tar_stream import expand_urls, stream_samples


def png_bytes(seed: int, size: int = 12, mode: str = "L") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def make_folder(root: Path, sizes: list[int], nested: bool = True) -> Path:
    for c, size in enumerate(sizes):
        folder = root / f"group{c % 2}" / f"char{c:02d}" if nested else root / f"char{c:02d}"
        folder.mkdir(parents=True)
        for i in range(size):
            (folder / f"{i:02d}.png").write_bytes(png_bytes(100 * c + i))
    return root


@pytest.fixture
def shard_dir(tmp_path: Path) -> Path:
    """6 classes x 3 images, 5 samples per shard: one class per shard... two whole classes fit."""
    make_folder(tmp_path / "src", [3] * 6)
    write_dataset("folder", tmp_path / "src", tmp_path / "shards", samples_per_shard=6, holdout=0.0)
    return tmp_path / "shards"


def test_shards_index_and_manifest(shard_dir: Path, tmp_path: Path) -> None:
    manifest = read_manifest(shard_dir)
    assert manifest["num_samples"] == 18 and manifest["num_classes"] == 6 and manifest["num_shards"] == 3
    assert manifest["source"]["format"] == "folder" and manifest["fingerprint"]
    assert manifest["class_names"]["0"] == "group0/char00"
    shards = IndexedShards(shard_dir)
    assert shards.labels == list(range(6)) and shards.class_sizes() == [3] * 6
    # Classes stay whole inside a shard, and the index seeks straight to the original bytes.
    assert all(len({entry[0] for entry in entries}) == 1 for entries in shards.entries)
    assert manifest["class_names"]["3"] == "group1/char01"  # labels follow the sorted class paths
    files = sorted((tmp_path / "src" / "group1" / "char01").iterdir())
    assert shards.read(3, 1) == files[1].read_bytes()
    assert shards.where(3, 1) == ("shard-000001.tar", "c000003_0001")


def test_rerun_skips_and_changed_input_rewrites(shard_dir: Path, tmp_path: Path) -> None:
    before = (shard_dir / "shard-000000.tar").stat().st_mtime_ns
    [summary] = write_dataset("folder", tmp_path / "src", shard_dir, samples_per_shard=6, holdout=0.0)
    assert summary["written"] is False
    assert (shard_dir / "shard-000000.tar").stat().st_mtime_ns == before
    (tmp_path / "src" / "group0" / "char00" / "00.png").write_bytes(png_bytes(999, size=14))
    [summary] = write_dataset("folder", tmp_path / "src", shard_dir, samples_per_shard=6, holdout=0.0)
    assert summary["written"] is True


class FailAfter:
    """Reads images, but raises (like a killed process) once ``limit`` images were read."""

    def __init__(self, limit: int):
        self.limit, self.count = limit, 0

    def read(self, seed: int) -> bytes:
        self.count += 1
        if self.count > self.limit:
            raise KeyboardInterrupt
        return png_bytes(seed)


def _samples(reader: FailAfter) -> list[Sample]:
    return [
        Sample(label=c, key=f"c{c:06d}_{i:04d}", read=lambda seed=10 * c + i: reader.read(seed), origin=f"{c}/{i}")
        for c in range(4)
        for i in range(3)
    ]


def test_interrupted_write_leaves_nothing_readable_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    failing = FailAfter(limit=7)  # dies inside the third shard (3 samples per shard)
    with pytest.raises(KeyboardInterrupt):
        write_shards(_samples(failing), out, 3, {"format": "test"})
    assert not is_complete(out)
    with pytest.raises(ValueError, match="not a complete shard directory"):
        IndexedShards(out)
    partial = tmp_path / "out.partial"
    assert sorted(p.name for p in partial.glob("shard-*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    kept = (partial / "shard-000000.tar").stat().st_mtime_ns
    resumed = FailAfter(limit=100)
    final, written = write_shards(_samples(resumed), out, 3, {"format": "test"})
    assert written and resumed.count == 6  # only the two unfinished shards were read again
    assert (final / "shard-000000.tar").stat().st_mtime_ns == kept
    assert IndexedShards(final).class_sizes() == [3, 3, 3, 3]
    assert not partial.exists()


def _slow_png(seed: int) -> bytes:
    time.sleep(0.02)  # long enough that the writers below overlap
    return png_bytes(seed)


def _write_slowly(out: Path) -> bool:
    samples = [Sample(i // 3, f"k{i}", functools.partial(_slow_png, i)) for i in range(12)]
    return write_shards(samples, out, 3, {"format": "test"})[1]


def test_concurrent_writers_of_one_directory_take_turns(tmp_path: Path) -> None:
    # dml-dist tune starts its trials at once, and each resolves the same (procedural) data.
    out = tmp_path / "out"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        written = pool.map(_write_slowly, [out] * 3)
    assert sorted(written) == [False, False, True]  # one wrote it, the others found it complete
    assert is_complete(out) and IndexedShards(out).class_sizes() == [3, 3, 3, 3]
    assert not (tmp_path / "out.partial").exists()


def test_missing_shards_are_errors_at_start(shard_dir: Path) -> None:
    with pytest.raises(ValueError, match="shard-000003.tar does not exist"):
        expand_urls(str(shard_dir / "shard-{000000..000009}.tar"))
    (shard_dir / "shard-000002.tar").unlink()
    with pytest.raises(ValueError, match="shard-000002.tar listed in class_index.json does not exist"):
        IndexedShards(shard_dir)


def test_brace_lists_and_file_urls(shard_dir: Path) -> None:
    direct = list(stream_samples(shard_dir))
    assert len(direct) == 18
    assert list(stream_samples(str(shard_dir / "shard-{000000..000002}.tar"))) == direct
    assert list(stream_samples(f"file://{shard_dir}/shard-{{000000..000002}}.tar")) == direct  # through pyarrow.fs


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_bad_data_in_streams_is_skipped_counted_and_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = png_bytes(1)
    _tar(
        tmp_path / "bad-000000.tar",
        [
            ("a0.png", good),
            ("a0.cls", b"7"),
            ("b1.png", good),
            ("b1.cls", b"seven"),  # non-integer class
            ("c2.png", good),  # no class field
            ("d3.png", b"not an image at all"),  # undecodable
            ("d3.cls", b"7"),
            ("e4.png", good[: len(good) // 2]),  # truncated image
            ("e4.cls", b"7"),
            ("f5.png", good),
            ("f5.cls", b"7"),
        ],
    )
    (tmp_path / "bad-000001.tar").write_bytes(b"")  # empty shard
    _tar(tmp_path / "bad-000002.tar", [("g6.png", good), ("g6.cls", b"8"), ("h7.png", good), ("h7.cls", b"8")])
    raw = bytearray((tmp_path / "bad-000002.tar").read_bytes())
    raw[2048 + 10] ^= 0xFF  # corrupt the header of the second sample's image member
    (tmp_path / "bad-000002.tar").write_bytes(bytes(raw))
    loader = StreamingClassLoader(
        str(tmp_path / "bad-{000000..000002}.tar"),
        DecodeSpec(12),
        seed=0,
        images_per_class=2,
        world_size=1,
        rank=0,
    )
    before = loader.skipped_samples
    with caplog.at_level(logging.WARNING, logger="dml_dist.data"):
        images, labels = loader.load(0, [0])
    assert labels.tolist() == [7, 7] and images.shape == (2, 1, 12, 12)
    # The rest of the pass: an empty shard, and a corrupt header that loses g6 (whose image came
    # before it) and h7; no class fills, so a second pass serves class 7 again.
    assert loader.load(1, [0])[1].tolist() == [7, 7]
    assert loader.skipped_samples - before == 6 + 4  # every skip is counted; each is warned once
    text = caplog.text
    for shard, key in [
        ("bad-000000.tar", "b1"),
        ("bad-000000.tar", "c2"),
        ("bad-000000.tar", "d3"),
        ("bad-000000.tar", "e4"),
        ("bad-000001.tar", "-"),
        ("bad-000002.tar", "g6"),
    ]:
        assert f"skipped {key} in shard {shard}" in text, (shard, key)
    assert "empty shard" in text and "bad header checksum" in text and "not an integer" in text


def test_bad_data_in_indexed_reads_is_replaced_counted_and_named(
    shard_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shards = IndexedShards(shard_dir)
    _, offset, size, key = shards.entries[1][0]
    with open(shard_dir / shards.shards[0], "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\0" * size)  # an undecodable image inside an intact tar
    loader = ClassBatchLoader(shards, DecodeSpec(12), seed=0, images_per_class=3, world_size=1, rank=0)
    before = loader.skipped_samples
    with caplog.at_level(logging.WARNING, logger="dml_dist.data"):
        images, labels = loader.load(0, [1, 2])
    assert images.shape == (6, 1, 12, 12) and labels.tolist() == [1, 1, 1, 2, 2, 2]
    assert loader.skipped_samples - before >= 1
    assert f"skipped {key} in shard {shards.shards[0]}" in caplog.text
    # A shard cut short: its samples are skipped, the batch is still full.
    last = shard_dir / shards.shards[2]
    last.write_bytes(last.read_bytes()[:600])
    images, _ = loader.load(1, [4, 5])
    assert images.shape == (6, 1, 12, 12)
    assert "truncated" in caplog.text


@pytest.mark.parametrize("policy", ["replace", "exclude"])
def test_classes_with_fewer_than_k_images(tmp_path: Path, policy: str, caplog: pytest.LogCaptureFixture) -> None:
    make_folder(tmp_path / "src", [3, 1, 3, 2], nested=False)
    write_dataset("folder", tmp_path / "src", tmp_path / "shards", samples_per_shard=100, holdout=0.0)
    with caplog.at_level(logging.WARNING, logger="dml_dist.data"):
        loader = ClassBatchLoader(
            IndexedShards(tmp_path / "shards"),
            DecodeSpec(12),
            seed=0,
            images_per_class=3,
            world_size=1,
            rank=0,
            min_images_policy=policy,
        )
    assert caplog.text.count("fewer than K=3 images") == 1
    if policy == "replace":
        assert loader.num_classes == 4
        _, labels = loader.load(0, [1, 3])
        assert labels.tolist() == [1, 1, 1, 3, 3, 3]
    else:
        assert loader.num_classes == 2 and loader.labels == [0, 2]
        _, labels = loader.load(0, [0, 1])
        assert labels.tolist() == [0, 0, 0, 2, 2, 2]


@pytest.mark.parametrize("world_size", [1, 2])
def test_streaming_gives_each_rank_its_exact_share(tmp_path: Path, world_size: int) -> None:
    make_folder(tmp_path / "src", [4] * 8, nested=False)
    write_dataset("folder", tmp_path / "src", tmp_path / "shards", samples_per_shard=8, holdout=0.0)
    loaders = [
        StreamingClassLoader(
            tmp_path / "shards", DecodeSpec(12), seed=0, images_per_class=2, world_size=world_size, rank=r
        )
        for r in range(world_size)
    ]
    classes = list(range(4))  # N = 4 classes per global batch; streaming uses only their number
    for step in range(6):
        shares = [loader.load(step, classes) for loader in loaders]
        per_rank = [set(labels.tolist()) for _, labels in shares]
        for images, labels in shares:
            assert images.shape == (4 * 2 // world_size, 1, 12, 12)
            counts = np.bincount(labels.numpy())
            assert set(counts[counts > 0].tolist()) == {2}  # K images of each of its classes
        if world_size == 2:
            assert not per_rank[0] & per_rank[1]


@pytest.mark.parametrize("augment", ["none", "flip_crop", "affine"])
def test_loader_output_equals_direct_decode(shard_dir: Path, augment: str) -> None:
    shards = IndexedShards(shard_dir)
    spec = DecodeSpec(10, 1, augment)
    in_process = ClassBatchLoader(shards, spec, seed=3, images_per_class=2, world_size=2, rank=1)
    workers = ClassBatchLoader(shards, spec, seed=3, images_per_class=2, world_size=2, rank=1, num_workers=2)
    classes = [5, 0, 3, 2]
    images, labels = in_process.load(4, classes)
    share = in_process.share(4, classes)
    assert labels.tolist() == [shards.labels[c] for c, _ in share] and [c for c, _ in share][::2] == [3, 2]
    if augment == "none":
        direct = decode_batch([shards.read(c, s) for c, s in share], 10)
    else:
        direct = torch.stack(
            [torch.from_numpy(spec.decode(shards.read(c, s), 3, 4, row)) for row, (c, s) in enumerate(share)]
        )
    torch.testing.assert_close(images, direct)
    workers.prefetch(4, classes)  # decoded in worker processes, collected by load
    worker_images, worker_labels = workers.load(4, classes)
    torch.testing.assert_close(worker_images, images)
    assert worker_labels.tolist() == labels.tolist()
    other, _ = workers.load(5, classes)  # no prefetch: loaded on demand
    torch.testing.assert_close(other, in_process.load(5, classes)[0])
    workers.close()


def test_rgb_decode_and_augmentation_shapes() -> None:
    data = png_bytes(5, size=40, mode="RGB")
    plain = decode_image(data, 16, channels=3)
    assert plain.shape == (3, 16, 16) and plain.dtype == np.float32 and -1 <= plain.min() <= plain.max() <= 1
    aug = decode_image(data, 16, 3, "flip_crop", np.random.default_rng(0))
    assert aug.shape == (3, 16, 16)


def test_affine_moves_a_drawing_and_fills_with_its_background() -> None:
    """A dark square on white: after the affine map the corners are background and the ink keeps
    its area within the scale range (0.85^2 .. 1.15^2), while the drawing moved."""
    from PIL import Image

    canvas = np.full((32, 32), 255, dtype=np.uint8)
    canvas[12:20, 10:22] = 0
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")
    plain = decode_image(buffer.getvalue(), 32)
    ink = (plain < 0).sum()
    moved = 0
    for seed in range(20):
        out = decode_image(buffer.getvalue(), 32, 1, "affine", np.random.default_rng(seed))
        assert out.shape == (1, 32, 32)
        assert (out[0, [0, 0, -1, -1], [0, -1, 0, -1]] > 0.99).all()  # white fill
        assert 0.6 * ink <= (out < 0).sum() <= 1.45 * ink
        moved += not np.allclose(out, plain)
    assert moved == 20


# ----------------------------------------------------------------------------- formats
def _images(root: Path, rels: list[str]) -> None:
    for i, rel in enumerate(rels):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(png_bytes(i))


def test_cub200_first_hundred_classes_train(tmp_path: Path) -> None:
    rels = [f"{c:03d}.Bird/img{i}.jpg" for c in (1, 100, 101, 200) for i in range(2)]
    _images(tmp_path / "images", rels)
    (tmp_path / "images.txt").write_text("".join(f"{i + 1} {rel}\n" for i, rel in enumerate(rels)))
    (tmp_path / "image_class_labels.txt").write_text("".join(f"{i + 1} {int(rel[:3])}\n" for i, rel in enumerate(rels)))
    (tmp_path / "classes.txt").write_text("1 001.Bird\n100 100.Bird\n101 101.Bird\n200 200.Bird\n")
    splits = convert("cub200", tmp_path)
    assert sorted({c for c, _ in splits["train"].items}) == [1, 100]
    assert sorted({c for c, _ in splits["test"].items}) == [101, 200]
    assert splits["test"].names[200] == "200.Bird"


def test_cars196_first_98_classes_train(tmp_path: Path) -> None:
    from scipy.io import savemat

    rels = [f"car_ims/{i:06d}.jpg" for i in range(4)]
    _images(tmp_path, rels)
    dtype = [("relative_im_path", "O"), ("class", "O"), ("test", "O")]
    records = np.array([(rel, c, 0) for rel, c in zip(rels, [1, 98, 99, 196], strict=True)], dtype=dtype)
    savemat(tmp_path / "cars_annos.mat", {"annotations": records.reshape(1, -1)})
    splits = convert("cars196", tmp_path)
    assert sorted(c for c, _ in splits["train"].items) == [1, 98]
    assert sorted(c for c, _ in splits["test"].items) == [99, 196]
    assert splits["train"].items[0][1] == tmp_path / "car_ims/000000.jpg"


def test_sop_uses_its_list_files(tmp_path: Path) -> None:
    header = "image_id class_id super_class_id path\n"
    (tmp_path / "Ebay_train.txt").write_text(header + "1 1 1 bicycle_final/a.JPG\n2 1 1 bicycle_final/b.JPG\n")
    (tmp_path / "Ebay_test.txt").write_text(header + "3 11319 2 chair_final/c.JPG\n")
    _images(tmp_path, ["bicycle_final/a.JPG", "bicycle_final/b.JPG", "chair_final/c.JPG"])
    splits = convert("sop", tmp_path)
    assert [c for c, _ in splits["train"].items] == [1, 1] and [c for c, _ in splits["test"].items] == [11319]


def test_inshop_keeps_query_and_gallery_in_the_manifest(tmp_path: Path) -> None:
    rows = [
        ("img/WOMEN/Dresses/id_00000002/01.jpg", "id_00000002", "train"),
        ("img/WOMEN/Dresses/id_00000002/02.jpg", "id_00000002", "train"),
        ("img/MEN/Denim/id_00000007/01.jpg", "id_00000007", "query"),
        ("img/MEN/Denim/id_00000007/02.jpg", "id_00000007", "gallery"),
        ("img/MEN/Denim/id_00000009/01.jpg", "id_00000009", "gallery"),
    ]
    _images(tmp_path / "src", [r[0] for r in rows])
    (tmp_path / "src" / "Eval").mkdir()
    (tmp_path / "src" / "Eval" / "list_eval_partition.txt").write_text(
        "5\nimage_name item_id evaluation_status\n" + "".join(" ".join(r) + "\n" for r in rows)
    )
    assert main(["shards", str(tmp_path / "src"), str(tmp_path / "out"), "--format", "inshop"]) == 0
    assert read_manifest(tmp_path / "out" / "train")["num_classes"] == 1
    test = read_manifest(tmp_path / "out" / "test")
    assert test["num_samples"] == 3
    assert test["source"]["roles"] == {"query": ["c000007_0000"], "gallery": ["c000007_0001", "c000009_0000"]}


# ----------------------------------------------------------------------------- CLI and config
def test_shards_command_splits_a_folder_and_train_finds_both(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_folder(tmp_path / "src", [2] * 10)
    assert main(["shards", str(tmp_path / "src"), str(tmp_path / "out"), "--samples-per-shard", "4"]) == 0
    captured = capsys.readouterr()
    assert "shards train: 100%" in captured.err and "16/16" in captured.err  # the progress bar
    assert "train: 16 images of 8 classes" in captured.out and "test: 4 images of 2 classes" in captured.out
    assert main(["shards", str(tmp_path / "src"), str(tmp_path / "out"), "--samples-per-shard", "4"]) == 0
    assert captured.out.count("written") == 2 and "already complete, skipped" in capsys.readouterr().out
    paths = resolve_data(DataConfig(train_shards=str(tmp_path / "out")))
    assert paths.train == (tmp_path / "out" / "train").resolve() and paths.eval == (tmp_path / "out" / "test").resolve()
    assert IndexedShards(paths.eval).labels == [8, 9]  # held-out classes keep their own labels


def test_data_config_is_validated() -> None:
    with pytest.raises(ValueError, match="set mining.enabled: false"):
        load_config(None, ["data.mode=streaming", "mining.enabled=true"])
    with pytest.raises(ValueError, match="model.in_channels"):
        load_config(None, ["data.channels=3"])
    with pytest.raises(ValueError, match="data.augment"):
        load_config(None, ["data.augment=rotate"])
    config = load_config(None, ["data.channels=3", "model.in_channels=3", "data.image_size=24"])
    assert config.data.decode_size == 24 and load_config(None).data.decode_size == 32


def test_samples_must_be_grouped_by_class(tmp_path: Path) -> None:
    samples = file_samples([(0, Path(__file__))])
    mixed = [samples[0], Sample(1, "k1", samples[0].read), Sample(0, "k2", samples[0].read)]
    with pytest.raises(ValueError, match="grouped by class"):
        write_shards(mixed, tmp_path / "x", 10, {})
