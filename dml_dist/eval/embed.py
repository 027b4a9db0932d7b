"""Embed images with a model: shard directories (evaluation) or image folders (``dml-dist embed``).

``progress=True`` draws a bar (images, images/s, ETA; ``observability/progress.py``): the
``eval`` and ``embed`` commands ask for it, the training loop's periodic evaluation does not.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dml_dist.data.bad_data import BadDataLog
from dml_dist.data.images import decode_image
from dml_dist.data.shard_layout import IMAGE_SUFFIXES, is_complete, read_manifest
from dml_dist.data.tar_stream import expand_urls, iter_tar_samples
from dml_dist.observability.progress import progress_bar

T = TypeVar("T")


def embed_encoded(
    model: nn.Module,
    images: Iterable[bytes],
    image_size: int,
    batch_size: int,
    device: torch.device,
    channels: int = 1,
    bar: Any = None,
    interpolation: str = "bilinear",
) -> np.ndarray:
    """Normalized float32 embeddings [n, D] of encoded images, in input order (every one must decode).

    ``bar`` (a ``progress_bar``) advances by each batch's size."""
    arrays = (decode_image(data, image_size, channels, interpolation=interpolation) for data in images)
    return embed_arrays(model, arrays, batch_size, device, bar)


@torch.no_grad()
def embed_arrays(
    model: nn.Module, arrays: Iterable[np.ndarray], batch_size: int, device: torch.device, bar: Any = None
) -> np.ndarray:
    """Normalized float32 embeddings [n, D] of decoded images (each [C, S, S]), in input order."""
    was_training = model.training
    model.eval()
    parts: list[np.ndarray] = []
    dtype = next(model.parameters()).dtype
    for chunk in _chunks(arrays, batch_size):
        batch = torch.from_numpy(np.stack(chunk)).to(device=device, dtype=dtype)
        parts.append(F.normalize(model(batch).float(), dim=1).cpu().numpy())
        if bar is not None:
            bar.update(len(chunk))
    model.train(was_training)
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def embed_shards_keyed(
    model: nn.Module,
    directory: str | Path,
    image_size: int,
    batch_size: int,
    device: torch.device,
    channels: int = 1,
    progress: bool = False,
    bad: BadDataLog | None = None,
    interpolation: str = "bilinear",
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(embeddings [n, D], labels [n], sample keys [n]) of every usable sample of a shard directory.

    Bad data (a corrupt tar member, an undecodable image) is skipped, warned about and counted in
    ``bad``, so one bad image never stops an evaluation; a storage error is raised
    (``data/bad_data.py``)."""
    bad = BadDataLog() if bad is None else bad
    labels: list[int] = []
    keys: list[str] = []

    def images() -> Iterator[np.ndarray]:
        for url in expand_urls(directory):
            for key, label, data in iter_tar_samples(url, bad):
                try:
                    image = decode_image(data, image_size, channels, interpolation=interpolation)
                except Exception as err:  # PIL raises several types for undecodable or truncated images
                    bad.skip(Path(url).name, key, f"undecodable image ({type(err).__name__}: {err})")
                    continue
                keys.append(key)
                labels.append(label)
                yield image

    if not progress:
        emb = embed_arrays(model, images(), batch_size, device)
    else:
        total = read_manifest(directory).get("num_samples") if is_complete(directory) else None
        with progress_bar(total, desc="embed", unit="img") as bar:
            emb = embed_arrays(model, images(), batch_size, device, bar=bar)
    return emb, np.asarray(labels, dtype=np.int64), keys


def read_images(directory: str | Path, keys: set[str]) -> dict[str, bytes]:
    """The encoded images of the samples named ``keys`` in a shard directory (one pass)."""
    found: dict[str, bytes] = {}
    for url in expand_urls(directory):
        for key, _, image in iter_tar_samples(url):
            if key in keys:
                found[key] = image
        if len(found) == len(keys):
            break
    return found


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted: the row order of ``dml-dist embed``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--images: {folder} is not a directory")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
