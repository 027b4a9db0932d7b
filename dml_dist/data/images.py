"""Image decoding shared by training, evaluation and embedding, so all three see the same input."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


def decode_grayscale(data: bytes, image_size: int) -> np.ndarray:
    """Encoded image -> float32 [image_size, image_size] in [-1, 1] (grayscale, resized if needed)."""
    with Image.open(io.BytesIO(data)) as image:
        gray = image.convert("L")
        if gray.size != (image_size, image_size):
            gray = gray.resize((image_size, image_size), Image.Resampling.BILINEAR)
        pixels = np.asarray(gray, dtype=np.float32)
    return pixels / 127.5 - 1.0


def decode_batch(images: Sequence[bytes], image_size: int) -> torch.Tensor:
    """Encoded images -> float32 tensor [B, 1, image_size, image_size]."""
    array = np.stack([decode_grayscale(data, image_size) for data in images])
    return torch.from_numpy(array).unsqueeze(1)
