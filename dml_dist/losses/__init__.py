"""Metric-learning losses behind one interface, exact under all-gather (see ``base.py``)."""

from dml_dist.losses.base import MetricLoss
from dml_dist.losses.npair import NPairMCLoss
from dml_dist.losses.registry import LOSSES, build_loss

__all__ = ["LOSSES", "MetricLoss", "NPairMCLoss", "build_loss"]
