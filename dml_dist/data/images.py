"""Image decoding and augmentation shared by training, evaluation, embedding and the benchmark.

``decode_image`` turns encoded bytes into float32 [C, S, S] in [-1, 1] (C = 1 grayscale or 3
RGB). Without augmentation the whole image is resized to S x S, which is what evaluation and
embedding see. ``flip_crop`` is the usual augmentation for natural images: a random resized
crop (area 8%..100% of the image, aspect ratio 3/4..4/3, as in Inception / torchvision's
``RandomResizedCrop``) and a horizontal flip with probability 1/2. The random choices come from
the generator the caller passes, seeded per (step, row), so a batch is the same whichever
process decodes it. ``affine`` suits small drawings (handwriting, glyphs), whose classes a flip
or a crop can change: the image resized to S x S, then a random affine map about its centre,
rotation +-15 degrees, scale 0.85..1.15, shear +-10 degrees, shift +-10% of S, with the
background (the median of the border pixels) filling what comes in from outside. JPEGs are decoded at reduced scale (``Image.draft``) when that is still at
least S pixels on a side, which is most of the cost of decoding large photos.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def decode_image(
    data: bytes,
    image_size: int,
    channels: int = 1,
    augment: str = "none",
    rng: np.random.Generator | None = None,
    interpolation: str = "bilinear",
) -> np.ndarray:
    """Encoded image -> float32 [channels, image_size, image_size] in [-1, 1] (``interpolation``:
    the resize filter, ``bilinear`` or ``bicubic``, as the backbone was trained with)."""
    mode = "L" if channels == 1 else "RGB"
    resample = RESAMPLING[interpolation]
    with Image.open(io.BytesIO(data)) as image:
        if augment == "none":
            image.draft(mode, (image_size, image_size))
            converted = image.convert(mode)
            if converted.size != (image_size, image_size):
                converted = converted.resize((image_size, image_size), resample)
        elif augment == "affine":
            assert rng is not None, "augmentation needs a random generator"
            converted = _random_affine(image.convert(mode).resize((image_size, image_size), resample), rng)
        else:
            assert rng is not None, "augmentation needs a random generator"
            converted = image.convert(mode)
            box = _random_crop_box(converted.size, rng)
            converted = converted.resize((image_size, image_size), resample, box=box)
            if rng.random() < 0.5:
                converted = converted.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = np.asarray(converted, dtype=np.float32)
    pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels / 127.5 - 1.0)


def image_problem(data: bytes) -> str | None:
    """Why ``data`` is not a usable image, or None when it decodes in full.

    ``dml-dist shards`` calls this on every input file, so a truncated or mislabelled file is
    named at conversion rather than skipped later by whichever training step draws its class.
    The whole image is decoded (``load``), which is what finds a file cut short; JPEGs decode at
    reduced scale (``draft``), which still reads every byte of the compressed data.
    """
    if not data:
        return "empty file"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft(image.mode, (64, 64))
            image.load()
    except UnidentifiedImageError:
        return "not an image (no image format recognised)"
    except Exception as err:  # noqa: BLE001 (PIL raises OSError, SyntaxError, ValueError, ... for bad data)
        return f"cannot be decoded ({type(err).__name__}: {err})"
    return None


def _random_affine(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate, scale, shear and shift about the centre; the border's median colour fills the gaps."""
    size = image.size[0]
    angle = math.radians(rng.uniform(-15.0, 15.0))
    shear = math.radians(rng.uniform(-10.0, 10.0))
    scale = rng.uniform(0.85, 1.15)
    shift_x, shift_y = rng.uniform(-0.1, 0.1, size=2) * size
    # forward map A = R(angle) @ Shear(shear) * scale; PIL wants the inverse (output -> input pixel)
    a, b = math.cos(angle), -math.sin(angle + shear)
    c, d = math.sin(angle), math.cos(angle + shear)
    a, b, c, d = a * scale, b * scale, c * scale, d * scale
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    centre = (size - 1) / 2.0
    out_x, out_y = centre + shift_x, centre + shift_y
    coeffs = (ia, ib, centre - ia * out_x - ib * out_y, ic, id_, centre - ic * out_x - id_ * out_y)
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    fill = tuple(int(v) for v in np.median(border, axis=0).reshape(-1))
    return image.transform(
        image.size,
        Image.Transform.AFFINE,
        coeffs,
        Image.Resampling.BILINEAR,
        fillcolor=fill[0] if len(fill) == 1 else fill,
    )


def _random_crop_box(size: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    width, height = size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    side = min(width, height)  # fall back to the central square
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def decode_batch(images: Sequence[bytes], image_size: int, channels: int = 1) -> torch.Tensor:
    """Encoded images -> float32 tensor [B, channels, image_size, image_size] (no augmentation)."""
    return torch.from_numpy(np.stack([decode_image(data, image_size, channels) for data in images]))
