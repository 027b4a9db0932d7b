"""Losses by name: ``build_loss("multi_similarity", alpha=2, beta=50, base=0.5)``.

Names and parameters are checked: an unknown name or parameter raises ``ValueError`` listing
the valid ones. Every parameter has its paper's default, so ``build_loss(name)`` alone works.
"""

from __future__ import annotations

import inspect
from typing import Any

from dml_dist.losses.angular import AngularLoss
from dml_dist.losses.base import MetricLoss
from dml_dist.losses.binomial import BinomialDevianceLoss
from dml_dist.losses.contrastive import ContrastiveLoss
from dml_dist.losses.dro import DROKLLoss, DROTopKLoss, DROTopKPNLoss
from dml_dist.losses.histogram import HistogramLoss
from dml_dist.losses.lifted import LiftedStructureLoss
from dml_dist.losses.margin import MarginLoss
from dml_dist.losses.multi_similarity import MultiSimilarityLoss
from dml_dist.losses.nca import NCALoss
from dml_dist.losses.npair import NPairMCLoss, NPairOVOLoss
from dml_dist.losses.triplet import TripletLoss
from dml_dist.losses.tuplet import TupletLoss

LOSSES: dict[str, type[MetricLoss]] = {
    "contrastive": ContrastiveLoss,
    "triplet": TripletLoss,
    "tuplet": TupletLoss,
    "npair_mc": NPairMCLoss,
    "npair_ovo": NPairOVOLoss,
    "angular": AngularLoss,
    "lifted": LiftedStructureLoss,
    "multi_similarity": MultiSimilarityLoss,
    "nca": NCALoss,
    "histogram": HistogramLoss,
    "binomial": BinomialDevianceLoss,
    "margin": MarginLoss,
    "dro_topk": DROTopKLoss,
    "dro_topk_pn": DROTopKPNLoss,
    "dro_kl": DROKLLoss,
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
