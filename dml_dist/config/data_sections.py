"""The data sections of an experiment config: where training and evaluation images come from,
and the built-in procedural data set.

Each section checks its own fields when it is built, as in ``sections.py``; ``data.mode``
against mining and ``data.channels`` against the model are checked by ``ExperimentConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dml_dist.config.ranges import check_ranges


@dataclass(frozen=True)
class ProceduralDataConfig:
    """The built-in procedural glyph data set (used when no shards are given)."""

    num_classes: int = 2400
    """Total number of glyph classes (train + held-out)."""
    num_test_classes: int = 400
    """Classes held out for retrieval evaluation; disjoint from the training classes."""
    images_per_class: int = 12
    """Drawings per class, each with its own affine warp, stroke jitter and noise."""
    image_size: int = 32
    """Side of the square grayscale images, in pixels."""
    seed: int = 1234
    """Seed of the generator; the data set is a pure function of these fields."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """The section's own rules; ``ValueError`` naming the field."""
        if not 0 < self.num_test_classes < self.num_classes:
            raise ValueError(
                f"data.procedural.num_test_classes: expected between 1 and num_classes - 1 "
                f"({self.num_classes - 1}), got {self.num_test_classes}"
            )
        check_ranges(self, "data.procedural")


@dataclass(frozen=True)
class DataConfig:
    """Where training and evaluation images come from."""

    train_shards: str | None = None
    """Directory of training WebDataset shards with ``class_index.json``; null = procedural."""
    eval_shards: str | None = None
    """Directory of held-out shards for retrieval; null = the procedural test split."""
    cache_dir: str = "data/cache"
    """Where the procedural data set is written once and reused."""
    samples_per_shard: int = 2000
    """Samples per tar shard when writing shards."""
    image_size: int | None = None
    """Side of the square images the model sees (decode + resize); null = a timm backbone's input
    size (its timm data config), else ``procedural.image_size``."""
    mean: list[float] | None = None
    """Per-channel mean of the input convention (timm backbones: images in [0, 1] become
    (x - mean) / std as the network's first op); null = the backbone's timm data config."""
    std: list[float] | None = None
    """Per-channel standard deviation of the input convention; null = the backbone's timm data config."""
    interpolation: str | None = None
    """Resize filter when decoding: ``bilinear`` or ``bicubic``; null = the backbone's timm data
    config, else bilinear."""
    channels: int = 1
    """1 = grayscale, 3 = RGB (natural images); must equal ``model.in_channels``."""
    augment: str = "none"
    """Training augmentation: ``none``, ``flip_crop`` (random resized crop + horizontal flip, for
    photos) or ``affine`` (random rotation, scale, shear and shift, for drawings and handwriting)."""
    loader_workers: int = 0
    """DataLoader worker processes that decode and augment; 0 = decode in the training process."""
    mode: str = "indexed"
    """``indexed``: read the step's classes by the class index (mining works); ``streaming``: read
    shards front to back into per-class buffers and train on the classes that fill first."""
    min_images_policy: str = "replace"
    """A class with fewer than K images: ``replace`` (sample with replacement) or ``exclude``."""
    stream_buffer_samples: int = 20000
    """Streaming mode: most images held in the per-class buffers of one worker."""
    procedural: ProceduralDataConfig = field(default_factory=ProceduralDataConfig)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def decode_size(self) -> int:
        """The image side used for decoding: ``image_size``, or the procedural set's."""
        return self.image_size if self.image_size is not None else self.procedural.image_size

    @property
    def resize_filter(self) -> str:
        """The resize filter used for decoding: ``interpolation``, or bilinear."""
        return self.interpolation or "bilinear"

    def validate(self) -> None:
        """The section's own rules and those of ``procedural``; ``ValueError`` naming the field."""
        self.procedural.validate()
        if self.channels not in (1, 3):
            raise ValueError(f"data.channels: expected 1 (grayscale) or 3 (RGB), got {self.channels}")
        if self.interpolation not in (None, "bilinear", "bicubic"):
            raise ValueError(f"data.interpolation: expected bilinear, bicubic or null, got {self.interpolation!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) != self.channels:
                raise ValueError(f"data.{name}: expected {self.channels} values (data.channels), got {values}")
        if self.std is not None and any(v <= 0 for v in self.std):
            raise ValueError(f"data.std: expected positive values, got {self.std}")
        if self.augment not in ("none", "flip_crop", "affine"):
            raise ValueError(f"data.augment: expected none, flip_crop or affine, got {self.augment!r}")
        if self.mode not in ("indexed", "streaming"):
            raise ValueError(f"data.mode: expected indexed or streaming, got {self.mode!r}")
        if self.min_images_policy not in ("replace", "exclude"):
            raise ValueError(f"data.min_images_policy: expected replace or exclude, got {self.min_images_policy!r}")
        check_ranges(self, "data")
