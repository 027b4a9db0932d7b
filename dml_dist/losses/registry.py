"""Losses by name: ``build_loss("npair_mc", l2_reg=0.002)``; names and parameters are checked."""

from __future__ import annotations

import inspect
from typing import Any

from dml_dist.losses.base import MetricLoss
from dml_dist.losses.npair import NPairMCLoss

LOSSES: dict[str, type[MetricLoss]] = {
    "npair_mc": NPairMCLoss,
}


def build_loss(name: str, **hyperparameters: Any) -> MetricLoss:
    """Construct a registered loss; unknown names or parameters raise ``ValueError`` listing valid ones."""
    if name not in LOSSES:
        raise ValueError(f"loss.name: unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))}")
    cls = LOSSES[name]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(hyperparameters) - set(valid))
    if unknown:
        raise ValueError(
            f"loss.{unknown[0]}: unknown parameter of {name}; valid parameters: {', '.join(valid) or 'none'}"
        )
    return cls(**hyperparameters)
