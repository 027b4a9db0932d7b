"""The data sections of an experiment config: where training and evaluation images come from,
and the built-in procedural data set.

Each section checks its own fields when it is built, as in ``sections.py``; ``data.mode``
against mining and ``data.channels`` against the model are checked by ``ExperimentConfig``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator, model_validator

from dml_dist.config.fields import Float, Int, Section, Str, integer, one_of


class ProceduralDataConfig(Section):
    """The built-in procedural glyph data set (used when no shards are given)."""

    path = "data.procedural"

    num_classes: Int = Field(2400, json_schema_extra={"minimum": 2})
    """Total number of glyph classes (train + held-out)."""
    # At least 2 (the schema's minimum): the rule on num_test_classes checks it and names that field.
    num_test_classes: Int = Field(400, ge=1)
    """Classes held out for retrieval evaluation; disjoint from the training classes."""
    images_per_class: Int = Field(12, ge=2)
    """Drawings per class, each with its own affine warp, stroke jitter and noise."""
    image_size: Int = Field(32, ge=16)
    """Side of the square grayscale images, in pixels."""
    seed: Int = Field(1234, ge=0)
    """Seed of the generator; the data set is a pure function of these fields."""

    @model_validator(mode="after")
    def _test_classes_below_classes(self) -> ProceduralDataConfig:
        if not 0 < self.num_test_classes < self.num_classes:
            raise ValueError(
                f"data.procedural.num_test_classes: expected between 1 and num_classes - 1 "
                f"({self.num_classes - 1}), got {self.num_test_classes}"
            )
        return self


class DataConfig(Section):
    """Where training and evaluation images come from."""

    path = "data"

    train_shards: Str | None = None
    """Directory of training WebDataset shards with ``class_index.json``; null = procedural."""
    eval_shards: Str | None = None
    """Directory of held-out shards for retrieval; null = the procedural test split."""
    cache_dir: Str = "data/cache"
    """Where the procedural data set is written once and reused."""
    samples_per_shard: Int = Field(2000, gt=0)
    """Samples per tar shard when writing shards."""
    image_size: Annotated[int, Field(ge=8), BeforeValidator(integer)] | None = None
    """Side of the square images the model sees (decode + resize); null = a timm backbone's input
    size (its timm data config), else ``procedural.image_size``."""
    mean: list[Float] | None = None
    """Per-channel mean of the input convention (timm backbones: images in [0, 1] become
    (x - mean) / std as the network's first op); null = the backbone's timm data config."""
    std: list[Float] | None = None
    """Per-channel standard deviation of the input convention; null = the backbone's timm data config."""
    interpolation: Str | None = None
    """Resize filter when decoding: ``bilinear`` or ``bicubic``; null = the backbone's timm data
    config, else bilinear."""
    channels: Int = Field(1, ge=1, le=3)
    """1 = grayscale, 3 = RGB (natural images); must equal ``model.in_channels``."""
    augment: Annotated[Str, one_of("none", "flip_crop", "affine")] = "none"
    """Training augmentation: ``none``, ``flip_crop`` (random resized crop + horizontal flip, for
    photos) or ``affine`` (random rotation, scale, shear and shift, for drawings and handwriting)."""
    loader_workers: Int = Field(0, ge=0)
    """DataLoader worker processes that decode and augment; 0 = decode in the training process."""
    mode: Annotated[Str, one_of("indexed", "streaming")] = "indexed"
    """``indexed``: read the step's classes by the class index (mining works); ``streaming``: read
    shards front to back into per-class buffers and train on the classes that fill first."""
    min_images_policy: Annotated[Str, one_of("replace", "exclude")] = "replace"
    """A class with fewer than K images: ``replace`` (sample with replacement) or ``exclude``."""
    stream_buffer_samples: Int = Field(20000, gt=0)
    """Streaming mode: most images held in the per-class buffers of one worker."""
    procedural: ProceduralDataConfig = Field(default_factory=ProceduralDataConfig)

    @property
    def decode_size(self) -> int:
        """The image side used for decoding: ``image_size``, or the procedural set's."""
        return self.image_size if self.image_size is not None else self.procedural.image_size

    @property
    def resize_filter(self) -> str:
        """The resize filter used for decoding: ``interpolation``, or bilinear."""
        return self.interpolation or "bilinear"

    @field_validator("channels", mode="before")
    @classmethod
    def _channels(cls, channels: Any) -> int:
        value = integer(channels)  # before the bound (in [1, 3]), so that the message says what 1 and 3 are
        if value not in (1, 3):
            raise ValueError(f"expected 1 (grayscale) or 3 (RGB), got {value}")
        return value

    @field_validator("interpolation")
    @classmethod
    def _interpolation(cls, interpolation: str | None) -> str | None:
        if interpolation not in (None, "bilinear", "bicubic"):
            raise ValueError(f"expected bilinear, bicubic or null, got {interpolation!r}")
        return interpolation

    @model_validator(mode="after")
    def _one_value_per_channel(self) -> DataConfig:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) != self.channels:
                raise ValueError(f"data.{name}: expected {self.channels} values (data.channels), got {values}")
        if self.std is not None and any(v <= 0 for v in self.std):
            raise ValueError(f"data.std: expected positive values, got {self.std}")
        return self
