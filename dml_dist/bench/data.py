"""``dml-dist bench data``: samples/s of the training loader against plain decoding.

One run, on the same images (an image folder or zip given with ``--images``, else the Omniglot
zip given with ``--omniglot`` or ``DML_DIST_OMNIGLOT``, else a small procedural set), converted
to shards with ``dml-dist shards``' own writer. Figures, each the best of three rounds (readers
alternate within a round):

- ``decode_floor``: ``decode_image`` of every image's bytes, already in memory, in a loop on one
  core (no file access, no batching): what decoding alone costs;
- ``indexed``: ``ClassBatchLoader``, class-driven batches of random classes (N classes x K), with
  next-step prefetch as the training loop does when mining is off;
- ``streaming``: ``StreamingClassLoader``, the same N x K batches from sequential shard reads;
- ``torch_files``: a plain torch ``DataLoader`` over the image files (PIL decode, same resize),
  the usual baseline.

Per-core figures divide by ``max(1, workers)``. Targets: indexed per core >= 0.8 x the floor;
indexed costs at most 10% more per sample than streaming (``indexed_over_streaming_cost``
<= 1.1).
"""

from __future__ import annotations

import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from dml_dist.bench.omniglot import omniglot_zip
from dml_dist.data.decode_spec import DecodeSpec
from dml_dist.data.formats import write_dataset
from dml_dist.data.images import decode_image
from dml_dist.data.indexed_loader import ClassBatchLoader
from dml_dist.data.sampler import random_classes
from dml_dist.data.shard_index import IndexedShards
from dml_dist.data.stream_loader import StreamingClassLoader
from dml_dist.eval.embed import list_images

IMAGE_SIZE = 32
NUM_CLASSES = 32
IMAGES_PER_CLASS = 4


class FileImages(Dataset):
    """Image files -> decoded tensors: the plain torch baseline."""

    def __init__(self, files: list[Path], image_size: int):
        self.files, self.image_size = files, image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(decode_image(self.files[index].read_bytes(), self.image_size))


def _image_folder(images: str | None, omniglot: str | None, workdir: Path) -> tuple[Path, str]:
    source = Path(images) if images else omniglot_zip(omniglot)
    if source is None:
        from dml_dist.config import ProceduralDataConfig
        from dml_dist.data.procedural import render_png

        config = ProceduralDataConfig(num_classes=136, num_test_classes=1, images_per_class=20, image_size=64)
        for c in range(config.num_classes):
            folder = workdir / "images" / f"class{c:04d}"
            folder.mkdir(parents=True)
            for i in range(config.images_per_class):
                (folder / f"{i:02d}.png").write_bytes(render_png(config, c, i))
        return workdir / "images", "procedural 136 classes x 20, 64 px"
    if source.suffix == ".zip":
        with zipfile.ZipFile(source) as archive:
            archive.extractall(workdir / "images")
        return workdir / "images", str(source)
    if not source.is_dir():
        raise ValueError(f"--images: {source} is neither a folder nor a .zip")
    return source, str(source)


def _best_rates(runs: dict[str, tuple[Any, int]], rounds: int = 3) -> dict[str, float]:
    """Samples/s of each reader, best of ``rounds``; readers alternate so that load from other
    processes on a shared machine hits them alike."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, (run, _) in runs.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: runs[name][1] / best[name] for name in runs}


def run_data_bench(images: str | None = None, num_workers: int = 0, omniglot: str | None = None) -> dict[str, Any]:
    """Measure and print the table; returns the figures."""
    with tempfile.TemporaryDirectory(prefix="dml-bench-data-") as tmp:
        workdir = Path(tmp)
        folder, source = _image_folder(images, omniglot, workdir)
        write_dataset("folder", folder, workdir / "shards", samples_per_shard=256, holdout=0.0)
        shards = IndexedShards(workdir / "shards")
        encoded = [shards.read(c, s) for c in range(shards.num_classes) for s in range(shards.class_sizes()[c])]
        total = len(encoded)
        spec = DecodeSpec(IMAGE_SIZE, 1, "none")
        per_step = NUM_CLASSES * IMAGES_PER_CLASS
        steps = max(1, total // per_step)
        figures: dict[str, Any] = {"source": source, "images": total, "image_size": IMAGE_SIZE, "workers": num_workers}

        def floor() -> None:
            for data in encoded:
                decode_image(data, IMAGE_SIZE)

        indexed = ClassBatchLoader(
            shards, spec, seed=0, images_per_class=IMAGES_PER_CLASS, world_size=1, rank=0, num_workers=num_workers
        )
        plans = [random_classes(0, step, indexed.num_classes, NUM_CLASSES) for step in range(steps)]

        def run_indexed() -> None:
            for step, classes in enumerate(plans):
                indexed.load(step, classes)
                if step + 1 < steps:
                    indexed.prefetch(step + 1, plans[step + 1])

        streaming = StreamingClassLoader(
            workdir / "shards", spec, seed=0, images_per_class=IMAGES_PER_CLASS, world_size=1, rank=0,
            num_workers=num_workers,
        )  # fmt: skip

        def run_streaming() -> None:
            for step in range(steps):
                streaming.load(step, plans[step])

        files = list_images(folder)
        loader = DataLoader(FileImages(files, IMAGE_SIZE), batch_size=per_step, num_workers=num_workers)

        def run_files() -> None:
            for _ in loader:
                pass

        figures.update(
            _best_rates(
                {
                    "decode_floor": (floor, total),
                    "indexed": (run_indexed, steps * per_step),
                    "streaming": (run_streaming, steps * per_step),
                    "torch_files": (run_files, len(files)),
                }
            )
        )
        indexed.close()
        streaming.close()

    cores = max(1, num_workers)
    figures["indexed_per_core_over_floor"] = figures["indexed"] / cores / figures["decode_floor"]
    figures["indexed_over_streaming_cost"] = figures["streaming"] / figures["indexed"]
    _print_table(figures, cores)
    return figures


def _print_table(figures: dict[str, Any], cores: int) -> None:
    print(
        f"data bench: {figures['images']} images ({figures['source']}), decoded to {figures['image_size']} px, "
        f"{figures['workers']} loader workers, batches of {NUM_CLASSES} classes x {IMAGES_PER_CLASS}"
    )
    print(f"{'reader':<34}{'samples/s':>12}{'per core':>12}{'/ floor':>10}")
    rows = [
        ("plain decode loop (floor, 1 core)", figures["decode_floor"], 1),
        ("indexed class-driven loader", figures["indexed"], cores),
        ("streaming loader (per-class bufs)", figures["streaming"], cores),
        ("torch DataLoader over image files", figures["torch_files"], cores),
    ]
    for name, rate, n in rows:
        per_core = rate / n
        print(f"{name:<34}{rate:>12.0f}{per_core:>12.0f}{per_core / figures['decode_floor']:>10.2f}")
    print(
        f"indexed per core / floor = {figures['indexed_per_core_over_floor']:.2f} (target >= 0.8); "
        f"indexed cost / streaming cost = {figures['indexed_over_streaming_cost']:.2f} (target <= 1.10)"
    )
