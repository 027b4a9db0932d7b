"""Embed images with a model: shard directories (evaluation) or image folders (``dml-dist embed``).

``progress=True`` draws a bar (images, images/s, ETA; ``observability/progress.py``): the
``eval`` and ``embed`` commands ask for it, the training loop's periodic evaluation does not.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dml_dist.data.images import decode_batch
from dml_dist.data.shard_layout import is_complete, read_manifest
from dml_dist.data.tar_stream import expand_urls, iter_tar_samples
from dml_dist.observability.progress import progress_bar

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@torch.no_grad()
def embed_encoded(
    model: nn.Module,
    images: Iterable[bytes],
    image_size: int,
    batch_size: int,
    device: torch.device,
    channels: int = 1,
    bar: Any = None,
) -> np.ndarray:
    """Normalized float32 embeddings [n, D] of encoded images, in input order.

    ``bar`` (a ``progress_bar``) advances by each batch's size."""
    was_training = model.training
    model.eval()
    parts: list[np.ndarray] = []
    dtype = next(model.parameters()).dtype
    for chunk in _chunks(images, batch_size):
        batch = decode_batch(chunk, image_size, channels).to(device=device, dtype=dtype)
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
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(embeddings [n, D], labels [n], sample keys [n]) of every sample of a shard directory."""
    labels: list[int] = []
    keys: list[str] = []

    def images() -> Iterator[bytes]:
        for url in expand_urls(directory):
            for key, label, image in iter_tar_samples(url):
                keys.append(key)
                labels.append(label)
                yield image

    if not progress:
        emb = embed_encoded(model, images(), image_size, batch_size, device, channels)
    else:
        total = read_manifest(directory).get("num_samples") if is_complete(directory) else None
        with progress_bar(total, desc="embed", unit="img") as bar:
            emb = embed_encoded(model, images(), image_size, batch_size, device, channels, bar=bar)
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


def _chunks(items: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
