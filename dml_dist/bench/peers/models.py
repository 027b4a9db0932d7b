"""The peer's side of ``bench peers``: pytorch-metric-learning losses and miners as the peer
configures them, and the two backbones of its rows (the config's own and the peer's Conv-4)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dml_dist.config.schema import ExperimentConfig


class Conv4BN(nn.Module):
    """The peer's Conv-4: 4 x [conv3x3, BatchNorm2d, ReLU, max-pool 2], flattened map, linear head.

    [B, C, S, S] -> [B, embedding_dim]; the flattened map is 64 x (S // 16)^2 features (floors at
    each pooling: 28 px gives 1 x 1, 32 px gives 2 x 2).
    """

    def __init__(self, in_channels: int, image_size: int, embedding_dim: int, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        previous, side = in_channels, image_size
        for _ in range(4):
            layers += [
                nn.Conv2d(previous, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            previous, side = width, side // 2
        if side < 1:
            raise ValueError(f"bench peers: Conv-4 needs images of at least 16 px, got {image_size}")
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Linear(width * side * side, embedding_dim)

    def forward(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images_BCHW).flatten(1))


@dataclass(frozen=True)
class PeerLoss:
    """A PML loss (and miner) as the peer configures it."""

    key: str
    """Its name on the command line (``--peer-losses``)."""
    name: str
    build: Callable[[], tuple[nn.Module, nn.Module | None]]


def _npair() -> tuple[nn.Module, nn.Module | None]:
    from pytorch_metric_learning import losses, regularizers

    return losses.NPairsLoss(
        embedding_regularizer=regularizers.LpRegularizer(power=2), embedding_reg_weight=0.002
    ), None


def _triplet() -> tuple[nn.Module, nn.Module | None]:
    from pytorch_metric_learning import losses, miners

    return losses.TripletMarginLoss(margin=0.1), miners.TripletMarginMiner(margin=0.1, type_of_triplets="semihard")


def _multi_similarity() -> tuple[nn.Module, nn.Module | None]:
    from pytorch_metric_learning import losses, miners

    return losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), miners.MultiSimilarityMiner(epsilon=0.1)


PEER_LOSSES = (  # the strongest peer first: a run cut short still has it
    PeerLoss("ms", "PML multi-similarity + MS miner", _multi_similarity),
    PeerLoss("npair", "PML N-pair (Sohn, L2 0.002)", _npair),
    PeerLoss("triplet", "PML triplet + semihard miner", _triplet),
)
PEER_LOSS_KEYS = tuple(loss.key for loss in PEER_LOSSES)
BACKBONE_NAMES = ("config", "conv4_bn")


def describe_backbone(config: ExperimentConfig, backbone: str) -> str:
    """The backbone column of the table."""
    if backbone == "conv4_bn":
        side = config.data.decode_size // 16
        return f"Conv-4 BN ({side}x{side}x64 flat)"
    model = config.model
    if model.backbone != "small_cnn":
        return model.backbone
    pool = f"{model.pool_grid}x{model.pool_grid} flat" if model.pool_grid else "GAP"
    return f"small_cnn {model.channels} {model.norm} norm, {pool}"


def build_backbone(config: ExperimentConfig, backbone: str) -> nn.Module:
    """``conv4_bn``: the peer's Conv-4; ``config``: the config's model (``models/embedder.py``)."""
    from dml_dist.models.embedder import build_model

    if backbone == "conv4_bn":
        return Conv4BN(config.model.in_channels, config.data.decode_size, config.model.embedding_dim)
    return build_model(config.model)
