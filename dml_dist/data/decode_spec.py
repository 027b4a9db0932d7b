"""How a training image is decoded (side, channels, augmentation, resize filter), seeded per (seed, step, row)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dml_dist.config import DataConfig
from dml_dist.data.images import decode_image


@dataclass(frozen=True)
class DecodeSpec:
    """How a training image is decoded: side, channels, augmentation.

    A row's augmentation is drawn from a generator seeded by (seed, step, row), so the batch is
    the same whichever process decodes it.
    """

    image_size: int
    channels: int = 1
    augment: str = "none"
    interpolation: str = "bilinear"

    @classmethod
    def from_config(cls, data: DataConfig) -> DecodeSpec:
        return cls(data.decode_size, data.channels, data.augment, data.resize_filter)

    def decode(self, data: bytes, seed: int, step: int, row: int) -> np.ndarray:
        """Encoded image -> float32 [channels, image_size, image_size]."""
        rng = np.random.default_rng([seed, step, row, 3]) if self.augment != "none" else None
        return decode_image(data, self.image_size, self.channels, self.augment, rng, self.interpolation)
