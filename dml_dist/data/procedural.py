"""A procedural image data set with many classes and real intra-class variation.

Each class is a random glyph: 2 to 4 quadratic Bezier strokes with control points in the unit
square. Each image of a class redraws the glyph with its own variation, so that retrieval is
neither trivial nor hopeless:
- stroke jitter: every control point moves by N(0, 0.035^2) in unit coordinates;
- affine warp: rotation U(-15, 15) degrees, scale U(0.85, 1.15), shear U(-0.15, 0.15) and
  translation U(-0.07, 0.07), about the image centre;
- stroke width U(1.5, 3.0) pixels at the final size, drawn at 2x and box-downsampled
  (anti-aliasing);
- additive Gaussian pixel noise N(0, 12^2) on the 0..255 scale.

The data set is a pure function of ``ProceduralDataConfig``: glyph ``c`` depends on
``(seed, c)`` and drawing ``i`` on ``(seed, c, i)``, so any class can be regenerated alone.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from dml_dist.config import ProceduralDataConfig

_CURVE_POINTS = 24


def glyph_strokes(seed: int, class_id: int) -> np.ndarray:
    """Control points of class ``class_id``'s glyph: float array [strokes, 3, 2] in [0.15, 0.85]."""
    rng = np.random.default_rng([seed, class_id, 0])
    num_strokes = int(rng.integers(2, 5))
    return rng.uniform(0.15, 0.85, size=(num_strokes, 3, 2))


def draw_glyph(strokes: np.ndarray, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """One varied drawing of a glyph: uint8 array [image_size, image_size] (white on black)."""
    jittered = strokes + rng.normal(0.0, 0.035, size=strokes.shape)
    angle = np.deg2rad(rng.uniform(-15, 15))
    scale = rng.uniform(0.85, 1.15)
    shear = rng.uniform(-0.15, 0.15)
    shift = rng.uniform(-0.07, 0.07, size=2)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    warp = scale * rotation @ np.array([[1.0, shear], [0.0, 1.0]])
    t = np.linspace(0.0, 1.0, _CURVE_POINTS)[:, None]
    big = 2 * image_size
    width = max(1, int(round(2 * rng.uniform(1.5, 3.0))))
    canvas = Image.new("L", (big, big), 0)
    pen = ImageDraw.Draw(canvas)
    for p0, p1, p2 in jittered:
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        curve = (curve - 0.5) @ warp.T + 0.5 + shift
        pen.line([tuple(xy) for xy in curve * big], fill=255, width=width, joint="curve")
    small = np.asarray(canvas.resize((image_size, image_size), Image.Resampling.BOX), dtype=np.float32)
    noisy = small + rng.normal(0.0, 12.0, size=small.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def render_png(config: ProceduralDataConfig, class_id: int, index: int) -> bytes:
    """PNG bytes of drawing ``index`` of class ``class_id``."""
    rng = np.random.default_rng([config.seed, class_id, index + 1])
    pixels = draw_glyph(glyph_strokes(config.seed, class_id), config.image_size, rng)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def split_classes(config: ProceduralDataConfig) -> tuple[list[int], list[int]]:
    """(train class ids, held-out class ids): the last ``num_test_classes`` ids are held out."""
    num_train = config.num_classes - config.num_test_classes
    return list(range(num_train)), list(range(num_train, config.num_classes))
