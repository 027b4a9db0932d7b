"""The input a timm backbone expects: side, mean, std and resize filter, from its timm data config.

``resolve_input(config)`` fills each of ``data.image_size``, ``data.mean``, ``data.std`` and
``data.interpolation`` that the YAML leaves null from ``timm.data.resolve_data_config`` of the
model (its ``pretrained_cfg``: ``input_size``, ``mean``, ``std``, ``interpolation``); a side
given as ``model.backbone_args.img_size`` (a ViT built for small images) wins over the config's.
The driver calls it before writing ``config.yaml``, so the run directory records the values
used, and evaluation and ``dml-dist embed`` decode as training did. ``small_cnn`` configs are
returned unchanged. The model is built on the ``meta`` device: no memory, no weights.
"""

from __future__ import annotations

from typing import Any

import torch

from dml_dist.config.loader import replaced
from dml_dist.config.schema import ExperimentConfig
from dml_dist.models.timm_backbone import TIMM_PREFIX, create_timm_model


def timm_data_config(backbone: str, in_channels: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """timm's data config of the model: ``input_size`` (C, H, W), ``mean``, ``std``, ``interpolation``."""
    from timm.data import resolve_data_config

    with torch.device("meta"):
        model = create_timm_model(backbone, in_channels, kwargs)
    return dict(resolve_data_config({}, model=model))


def per_channel(values: Any, channels: int) -> list[float]:
    """timm's 3-channel mean/std for ``channels`` input channels (grayscale: their average)."""
    values = [float(v) for v in values]
    return values if len(values) == channels else [sum(values) / len(values)] * channels


def resolve_input(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with the null input fields of a timm backbone filled in (see module doc)."""
    model, data = config.model, config.data
    if not model.backbone.startswith(TIMM_PREFIX):
        return config
    timm_config = timm_data_config(model.backbone, model.in_channels, model.backbone_args)
    img_size = model.backbone_args.get("img_size")
    side = img_size if isinstance(img_size, int) else int(timm_config["input_size"][-1])
    interpolation = timm_config.get("interpolation")
    return replaced(
        config,
        {
            "data.image_size": data.image_size if data.image_size is not None else side,
            "data.mean": data.mean if data.mean is not None else per_channel(timm_config["mean"], model.in_channels),
            "data.std": data.std if data.std is not None else per_channel(timm_config["std"], model.in_channels),
            "data.interpolation": data.interpolation
            or (interpolation if interpolation in ("bilinear", "bicubic") else None),
        },
    )
