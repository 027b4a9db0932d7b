"""The networks ``bench gpu`` trains: the project's embedder of a timm backbone (its pooled
features under the linear head), and the model FLOPs per sample that MFU is taken against.

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` counts one forward of the embedder (a
multiply-add is 2 FLOPs; matrix products, convolutions and attention, the work that tensor cores
do); a training step is counted as 3 forwards (the backward computes gradients of activations
and of weights, each about one forward), the usual convention of MFU (Chowdhery et al. 2022,
PaLM, appendix B). Gradient caching re-runs the forward of every chunk: that extra forward is
not model FLOPs, so the same work done through chunks shows as a lower MFU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

EMBEDDING_DIM = 512


@dataclass(frozen=True)
class ModelSpec:
    """A timm backbone by name, the square input size, and ``img_size`` for the models whose
    position embeddings fix it (ViTs; None: the model takes any size)."""

    name: str
    image_size: int
    img_size: int | None = None

    @property
    def label(self) -> str:
        return f"{self.name}@{self.image_size}px"


def build_embedder(spec: ModelSpec, embedding_dim: int = EMBEDDING_DIM) -> nn.Module:
    """The project's embedder of ``model.backbone: timm/NAME`` (``models/timm_backbone.py``: the
    backbone's pooled features under the linear head, timm's input mean and std), random init
    (timing needs no weights), batch norm ``frozen``: the fine-tuning setting, and the one that
    every row can run (a global-batch BatchNorm does not go with gradient-cache chunks). Built from
    the timm parts, not through the config section, so it needs only torch and timm."""
    from timm.data import resolve_data_config

    from dml_dist.models.timm_backbone import TimmEmbedder, create_timm_model

    args = {} if spec.img_size is None else {"img_size": spec.img_size}
    backbone = create_timm_model(f"timm/{spec.name}", 3, args)
    timm_config = resolve_data_config({}, model=backbone)
    return TimmEmbedder(backbone, embedding_dim, timm_config["mean"], timm_config["std"], batch_norm="frozen")


def train_flops_per_sample(model: nn.Module, image_size: int, device: torch.device) -> float:
    """Model FLOPs of one training step per sample: 3 x one forward (module docstring)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    images = torch.zeros(2, 3, image_size, image_size, device=device)
    counter = FlopCounterMode(display=False)
    # Attention as plain matrix products, which the counter knows on every device (it has no
    # formula for the CPU's fused attention kernel); the same FLOPs as the fused kernels.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(images)
    return 3.0 * counter.get_total_flops() / images.shape[0]
