"""Embedding networks: backbone + linear head -> unnormalized embedding [B, D].

``small_cnn`` is a conv net for small grayscale images: per stage conv3x3 -> GroupNorm -> ReLU
-> 2x2 max-pool, then global average pooling and a linear head. GroupNorm (not BatchNorm) keeps
every sample's embedding independent of the rest of the batch, so splitting the batch across
workers changes nothing: the distributed step equals the single-process step exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from dml_dist.config.schema import ModelConfig

BACKBONES = ("small_cnn",)


class SmallConvEmbedder(nn.Module):
    """[B, 1, H, W] images -> [B, embedding_dim] embeddings."""

    def __init__(self, channels: list[int], embedding_dim: int, in_channels: int = 1):
        super().__init__()
        stages: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            stages += [
                nn.Conv2d(previous, width, kernel_size=3, padding=1, bias=False),
                nn.GroupNorm(min(8, width), width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            previous = width
        self.backbone = nn.Sequential(*stages)
        self.head = nn.Linear(previous, embedding_dim)

    def forward(self, images_B1HW: torch.Tensor) -> torch.Tensor:
        features_BC = self.backbone(images_B1HW).mean(dim=(2, 3))
        return self.head(features_BC)


def build_model(config: ModelConfig) -> nn.Module:
    if config.backbone not in BACKBONES:
        raise ValueError(f"model.backbone: unknown backbone {config.backbone!r}; valid: {', '.join(BACKBONES)}")
    return SmallConvEmbedder(config.channels, config.embedding_dim, in_channels=config.in_channels)
