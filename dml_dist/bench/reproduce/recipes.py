"""The rows of ``bench reproduce`` (a loss and its batch) and the scales, as config overrides."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

GROUPS = ("omniglot", "losses", "n")


@dataclass(frozen=True)
class Scale:
    """How big each group is: steps, N, and the evaluation interval."""

    omniglot_steps: int
    omniglot_n: int
    procedural_steps: int
    procedural_n: int
    n_sweep: tuple[int, ...]
    n_sweep_steps: int
    eval_every: int


QUICK = Scale(20, 32, 20, 64, (64, 128), 20, 10)
FULL = Scale(300, 32, 300, 128, (64, 128, 256, 512, 1000), 150, 25)  # the scale of docs/results/


@dataclass
class Recipe:
    """One row: a loss and its batch, as config overrides."""

    name: str
    loss: dict[str, Any]
    classes_divisor: int = 1
    images_per_class: int = 2


NPAIR = {"l2_reg": 0.002, "temperature": 0.1}
RECIPES = [
    Recipe("N-pair-mc", {"name": "npair_mc", **NPAIR}),
    Recipe("N-pair-ovo", {"name": "npair_ovo", **NPAIR}),
    Recipe("triplet (all)", {"name": "triplet", "margin": 0.2, "mining": "all"}),
    Recipe("(N+1)-tuplet, PK batch", {"name": "tuplet", **NPAIR}, classes_divisor=4, images_per_class=8),
    Recipe("multi-similarity", {"name": "multi_similarity"}, classes_divisor=2, images_per_class=4),
    Recipe("DRO-KL", {"name": "dro_kl"}, classes_divisor=2, images_per_class=4),
    Recipe("lifted structure", {"name": "lifted"}, classes_divisor=2, images_per_class=4),
]


def common_overrides(steps: int, eval_every: int) -> list[str]:
    """What every run of a group shares: its length, 2 workers, no mining, metrics or gallery."""
    return [
        f"train.steps={steps}",
        f"train.eval_every={eval_every}",
        "train.workers=2",
        f"train.log_every={max(1, eval_every)}",
        "mining.enabled=false",
        "metrics.enabled=false",
        "eval.gallery_queries=0",
    ]


def recipe_overrides(recipe: Recipe, n: int) -> list[str]:
    """The loss and the batch of ``recipe`` at N classes' worth of images (2N per step)."""
    loss = ",".join(f"{k}: {json.dumps(v)}" for k, v in recipe.loss.items())
    return [
        f"loss={{{loss}}}",
        f"batch.num_classes={n // recipe.classes_divisor}",
        f"batch.images_per_class={recipe.images_per_class}",
    ]


def slug(name: str) -> str:
    """A row's name as a directory name."""
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
