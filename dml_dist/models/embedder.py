"""Embedding networks: backbone + linear head -> unnormalized embedding [B, D].

``model.backbone`` is ``small_cnn`` (below) or ``timm/NAME``, any timm model
(``timm_backbone.py``); ``build_model`` gives either its first weights (``weights.py``).

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

import torch
from torch import nn

from dml_dist.config import DataConfig, ModelConfig
from dml_dist.models.global_batchnorm import GlobalBatchNorm2d
from dml_dist.models.input_config import per_channel
from dml_dist.models.timm_backbone import TimmEmbedder, create_timm_model
from dml_dist.models.weights import HUB_PREFIX, hub_backbone, load_run_weights, load_weights_file


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


def build_model(config: ModelConfig, data: DataConfig | None = None) -> nn.Module:
    """The embedder of ``config`` with its first weights (``pretrained``, then ``init_from``).

    ``data``: the input settings of a timm backbone (``data.mean`` / ``data.std``; null or no
    ``data``: the model's timm data config, ``models/input_config.py``).
    """
    if config.backbone == "small_cnn":
        if data is not None and (data.mean is not None or data.std is not None):
            raise ValueError(
                "data.mean: small_cnn takes images in [-1, 1] as decoded; set data.mean and data.std to null"
            )
        model: nn.Module = SmallConvEmbedder(
            config.channels, config.embedding_dim, config.in_channels, norm=config.norm, pool_grid=config.pool_grid
        )
    else:
        model = _timm_embedder(config, data)
    if config.init_from is not None:
        load_run_weights(model, config.init_from)
    return model


def _timm_embedder(config: ModelConfig, data: DataConfig | None) -> TimmEmbedder:
    source, kwargs = config.pretrained, config.backbone_args
    if source is True or (isinstance(source, str) and source.startswith(HUB_PREFIX)):
        hub_id = source.removeprefix(HUB_PREFIX) if isinstance(source, str) else None
        backbone = hub_backbone(config.backbone, config.in_channels, kwargs, hub_id)
    else:
        backbone = create_timm_model(config.backbone, config.in_channels, kwargs)
        if isinstance(source, str):
            load_weights_file(backbone, source, config.backbone)
    from timm.data import resolve_data_config

    timm_config = resolve_data_config({}, model=backbone)
    mean = data.mean if data is not None and data.mean is not None else timm_config["mean"]
    std = data.std if data is not None and data.std is not None else timm_config["std"]
    return TimmEmbedder(
        backbone,
        config.embedding_dim,
        per_channel(mean, config.in_channels),
        per_channel(std, config.in_channels),
        batch_norm=config.batch_norm,
    )


class EmbedderWithLoss(nn.Module):
    """The module the engine trains: the embedder, plus the loss when it has parameters.

    Some losses learn parameters (the margin loss's beta); holding the loss here puts them in
    the engine's optimizer and gradient reduction with the embedder's. ``forward`` embeds.
    Evaluation calls the embedder itself, in the engine's dtype.
    """

    def __init__(self, embedder: nn.Module, loss: nn.Module, autocast_bf16: bool = False):
        super().__init__()
        self.embedder = embedder
        self.loss = loss
        self.autocast_bf16 = autocast_bf16

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings; with ``autocast_bf16`` and CUDA input, computed under bf16 autocast (fp32
        weights: ``engine.precision: autocast``) and returned in fp32."""
        enabled = self.autocast_bf16 and images.is_cuda
        with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=enabled):
            emb = self.embedder(images)
        return emb.float() if enabled else emb
