"""Any timm model as the backbone of an embedder: ``model.backbone: timm/NAME``.

``TimmEmbedder`` = input normalization -> timm model built with ``num_classes=0`` (its pooled
features, [B, F], F = ``num_features``) -> linear head -> embedding [B, D].

- **Input.** Images arrive in [-1, 1] (``data/images.py``); the first operation maps them to
  the convention the weights were trained with, (x01 - mean) / std per channel, x01 = (x + 1) / 2.
  mean and std are ``data.mean`` / ``data.std`` (``models/input_config.py`` fills them from the
  model's timm data config when the YAML leaves them null). Done on the device, as the network's
  first op, so decoding stays one code path for every backbone.
- **Batch norm** (``model.batch_norm``): ``global`` swaps each ``BatchNorm2d`` for batch norm over
  the global batch (``global_batchnorm.py``, exact under the all-gather: a distributed step equals
  the single-process one); ``frozen`` uses the stored statistics and affine parameters as
  constants (timm's ``freeze_batch_norm_2d``), so each embedding is independent of its batch, the
  usual practice when fine-tuning a pretrained network on a small set.
- **Freezing** (``model.freeze_backbone_steps``): ``set_backbone_frozen(True)`` runs the backbone
  in eval mode under ``no_grad`` (no activations kept, no batch-norm statistics updated); the
  trainer also sets the backbone's learning rate to 0 meanwhile (``param_groups.py``), so
  nothing of the backbone changes, whatever the optimizer's weight decay.

Weights (``model.pretrained``, ``model.init_from``) are loaded by ``weights.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dml_dist.models.global_batchnorm import to_global_batch_norm

TIMM_PREFIX = "timm/"


def timm_name(backbone: str) -> str:
    """``timm/NAME`` -> ``NAME`` (a timm model name, with or without a ``.tag`` of its weights)."""
    return backbone.removeprefix(TIMM_PREFIX)


def create_timm_model(backbone: str, in_channels: int, kwargs: dict[str, Any], **extra: Any) -> nn.Module:
    """``timm.create_model`` without a classifier; ``ValueError`` naming the field for an unknown name."""
    import timm

    name = timm_name(backbone)
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:8]}*")[:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ValueError(f"model.backbone: timm has no model {name!r} (timm.list_models() lists them){hint}")
    try:
        return timm.create_model(name, num_classes=0, in_chans=in_channels, **kwargs, **extra)
    except TypeError as err:
        raise ValueError(f"model.backbone_args: {name} does not take {kwargs} ({err})") from err


class TimmEmbedder(nn.Module):
    """[B, C, H, W] images in [-1, 1] -> [B, embedding_dim] embeddings through a timm backbone."""

    def __init__(
        self,
        backbone: nn.Module,
        embedding_dim: int,
        mean: Sequence[float],
        std: Sequence[float],
        batch_norm: str = "global",
    ):
        super().__init__()
        if batch_norm == "frozen":
            from timm.layers import freeze_batch_norm_2d

            backbone = freeze_batch_norm_2d(backbone)
        else:
            backbone = to_global_batch_norm(backbone)
        self.backbone = backbone
        self.head = nn.Linear(int(backbone.num_features), embedding_dim)  # type: ignore[arg-type]
        self.register_buffer("pixel_mean", torch.tensor(list(mean))[None, :, None, None], persistent=False)
        self.register_buffer("pixel_std", torch.tensor(list(std))[None, :, None, None], persistent=False)
        self.backbone_frozen = False

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Frozen: the backbone runs in eval mode without gradient (see module doc)."""
        self.backbone_frozen = frozen
        self.backbone.train(self.training and not frozen)

    def forward(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        mean: torch.Tensor = self.pixel_mean  # type: ignore[assignment]
        std: torch.Tensor = self.pixel_std  # type: ignore[assignment]
        x = ((images_BCHW + 1.0) / 2.0 - mean.to(images_BCHW.dtype)) / std.to(images_BCHW.dtype)
        if not self.backbone_frozen:
            return self.head(self.backbone(x))
        self.backbone.eval()
        with torch.no_grad():
            features_BF = self.backbone(x)
        return self.head(features_BF)
