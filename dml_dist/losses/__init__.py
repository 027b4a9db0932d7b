"""Metric-learning losses behind one interface, exact under all-gather (see ``base.py``).

Select one by name with ``build_loss(name, **hyperparameters)`` (``registry.py``); each family
lives in its own module with its formula, paper and defaults in the docstring.
"""

from dml_dist.losses.base import MetricLoss
from dml_dist.losses.npair import NPairMCLoss, NPairOVOLoss
from dml_dist.losses.registry import LOSSES, build_loss

__all__ = ["LOSSES", "MetricLoss", "NPairMCLoss", "NPairOVOLoss", "build_loss"]
