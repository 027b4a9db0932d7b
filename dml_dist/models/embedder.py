"""Embedding networks: backbone + linear head -> unnormalized embedding [B, D].

``small_cnn`` is a conv net for small images: per stage conv3x3 -> norm -> ReLU -> 2x2 max-pool
(``model.channels`` sets depth and widths), then pooling and a linear head.
- ``model.norm: group`` (GroupNorm) keeps every sample's embedding independent of its batch;
  ``batch`` is batch normalization over the *global* batch (``global_batchnorm.py``), exact
  under the all-gather on gloo as on NCCL. Either way a distributed step equals the
  single-process step on the global batch.
- ``model.pool_grid: 0`` averages the last feature map to one vector (global average pooling);
  ``g > 0`` average-pools it to a g x g grid and flattens it, keeping where the strokes are: the
  Conv-4 of the few-shot and metric-learning literature is ``channels: [64, 64, 64, 64]``,
  ``norm: batch``, ``pool_grid: 2`` (its 2 x 2 x 64 map of 32 px input, flattened).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dml_dist.config import ModelConfig
from dml_dist.models.global_batchnorm import GlobalBatchNorm2d

BACKBONES = ("small_cnn", "resnet50", "bn_inception", "googlenet")


class SmallConvEmbedder(nn.Module):
    """[B, C, H, W] images -> [B, embedding_dim] embeddings."""

    def __init__(
        self, channels: list[int], embedding_dim: int, in_channels: int = 1, norm: str = "group", pool_grid: int = 0
    ):
        super().__init__()
        stages: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            normalize = GlobalBatchNorm2d(width) if norm == "batch" else nn.GroupNorm(min(8, width), width)
            stages += [
                nn.Conv2d(previous, width, kernel_size=3, padding=1, bias=False),
                normalize,
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            previous = width
        self.backbone = nn.Sequential(*stages)
        self.pool: nn.Module = nn.AdaptiveAvgPool2d(pool_grid) if pool_grid > 0 else nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(previous * max(pool_grid, 1) ** 2, embedding_dim)

    def forward(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        features_BF = self.pool(self.backbone(images_BCHW)).flatten(1)
        return self.head(features_BF)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PooledEmbedder(nn.Module):
    """An ImageNet backbone (``models/backbones.py``) with global pooling and a linear head.

    Images arrive in [-1, 1] (``data/images.py``); RGB input is mapped to the usual ImageNet
    convention, (x01 - mean) / std per channel, which is what pretrained weights expect
    (weights converted from a framework with another convention, such as Caffe's BGR 0-255,
    need that convention folded into their first convolution).
    """

    def __init__(self, backbone: nn.Module, num_features: int, embedding_dim: int, in_channels: int = 3):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(num_features, embedding_dim)
        mean = torch.tensor(IMAGENET_MEAN if in_channels == 3 else (0.5,) * in_channels)
        std = torch.tensor(IMAGENET_STD if in_channels == 3 else (0.5,) * in_channels)
        self.register_buffer("pixel_mean", mean[None, :, None, None], persistent=False)
        self.register_buffer("pixel_std", std[None, :, None, None], persistent=False)

    def forward(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        mean: torch.Tensor = self.pixel_mean  # type: ignore[assignment]
        std: torch.Tensor = self.pixel_std  # type: ignore[assignment]
        normalized = ((images_BCHW + 1.0) / 2.0 - mean) / std
        return self.head(self.backbone(normalized))


def check_pretrained_weights(config: ModelConfig) -> None:
    """``ValueError`` saying how to provide the weights when ``model.pretrained`` names no file."""
    if config.pretrained is None or Path(config.pretrained).is_file():
        return
    from dml_dist.models import backbones

    if config.backbone == "small_cnn":
        raise ValueError("model.pretrained: small_cnn has no pretrained weights; set it to null")
    factory = {"resnet50": backbones.ResNet50, "bn_inception": backbones.bn_inception, "googlenet": backbones.googlenet}
    backbones.load_pretrained(factory[config.backbone](config.in_channels), config.pretrained, config.backbone)


def build_model(config: ModelConfig) -> nn.Module:
    if config.backbone not in BACKBONES:
        raise ValueError(f"model.backbone: unknown backbone {config.backbone!r}; valid: {', '.join(BACKBONES)}")
    if config.backbone == "small_cnn":
        if config.pretrained is not None:
            raise ValueError("model.pretrained: small_cnn has no pretrained weights; set it to null")
        return SmallConvEmbedder(
            config.channels, config.embedding_dim, config.in_channels, norm=config.norm, pool_grid=config.pool_grid
        )
    from dml_dist.models import backbones

    factory = {"resnet50": backbones.ResNet50, "bn_inception": backbones.bn_inception, "googlenet": backbones.googlenet}
    backbone = factory[config.backbone](in_channels=config.in_channels)
    if config.pretrained is not None:
        backbones.load_pretrained(backbone, config.pretrained, config.backbone)
    num_features: int = backbone.num_features  # type: ignore[assignment]
    return PooledEmbedder(backbone, num_features, config.embedding_dim, config.in_channels)


class EmbedderWithLoss(nn.Module):
    """The module the engine trains: the embedder, plus the loss when it has parameters.

    Some losses learn parameters (the margin loss's beta); holding the loss here puts them in
    the engine's optimizer and gradient reduction with the embedder's. ``forward`` embeds.
    """

    def __init__(self, embedder: nn.Module, loss: nn.Module):
        super().__init__()
        self.embedder = embedder
        self.loss = loss

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedder(images)
