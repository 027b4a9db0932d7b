"""The range of every numeric config field, checked by each config section as it is built.

One table serves two readers: ``check_ranges`` (called by each section's ``validate`` when the
section is built, so a negative ``engine.lr`` is a one-line ``ValueError`` at load, not a
DeepSpeed traceback in a worker) and the JSON Schema of ``dml-dist config schema``
(``minimum``/``maximum``). Fields with rules that involve other fields
(``data.procedural.num_test_classes`` below ``num_classes``, N divisible by the workers) keep
those checks in their section or in ``ExperimentConfig`` (``schema.py``); their entry here is the
bound that holds on its own. A list field's bound applies to each element.

``tests/unit/config/test_config_describe.py`` requires an entry for every int and float field of the
schema, so a new field cannot skip its range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """low <= value <= high (``low_open``/``high_open``: strict); None = unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def describe(self) -> str:
        """``> 0``, ``>= 0``, ``in [0, 1)``: how an error message states the range."""
        if self.low is not None and self.high is not None:
            return (
                f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
            )
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return "any finite number"

    def json_schema(self) -> dict[str, float]:
        schema: dict[str, float] = {}
        if self.low is not None:
            schema["exclusiveMinimum" if self.low_open else "minimum"] = self.low
        if self.high is not None:
            schema["exclusiveMaximum" if self.high_open else "maximum"] = self.high
        return schema


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
SHARE = Range(0, 1)

RANGES: dict[str, Range] = {
    "data.procedural.num_classes": Range(2),
    "data.procedural.num_test_classes": Range(1),
    "data.procedural.images_per_class": Range(2),
    "data.procedural.image_size": Range(16),
    "data.procedural.seed": NON_NEGATIVE,
    "data.samples_per_shard": POSITIVE,
    "data.image_size": Range(8),
    "data.channels": Range(1, 3),
    "data.loader_workers": NON_NEGATIVE,
    "data.stream_buffer_samples": POSITIVE,
    "batch.num_classes": POSITIVE,
    "batch.images_per_class": Range(2),
    "batch.chunk_size": NON_NEGATIVE,
    "model.channels": POSITIVE,
    "model.embedding_dim": POSITIVE,
    "model.in_channels": Range(1, 3),
    "model.pool_grid": NON_NEGATIVE,
    "model.freeze_backbone_steps": NON_NEGATIVE,
    "mining.random_share": SHARE,
    "mining.warmup_coverage": SHARE,
    "mining.momentum": Range(0, 1, high_open=True),
    "mining.timeout_s": POSITIVE,
    "mining.refresh_after_steps": POSITIVE,
    "mining.refresh_every": NON_NEGATIVE,
    "mining.refresh_max_classes": POSITIVE,
    "mining.refresh_images_per_class": POSITIVE,
    "mining.exact_below_classes": NON_NEGATIVE,
    "mining.num_neighbours": POSITIVE,
    "mining.graph_rebuild_steps": NON_NEGATIVE,
    "mining.save_every_steps": NON_NEGATIVE,
    "mining.group_size": Range(2),
    "mining.top_k": POSITIVE,
    "mining.temperature": POSITIVE,
    "mining.warmup_steps": NON_NEGATIVE,
    "mining.ramp_steps": NON_NEGATIVE,
    "mining.fresh_within_steps": NON_NEGATIVE,
    "mining.candidate_pool": NON_NEGATIVE,
    "mining.similarity_cap": Range(0, 1, low_open=True),  # 1 = off; a cap <= 0 leaves no feasible batch
    "mining.partition_double_every_steps": NON_NEGATIVE,
    "mining.partition_max_cluster_size": Range(1),
    "mining.partition_recluster_steps": NON_NEGATIVE,
    "engine.backbone_lr_mult": NON_NEGATIVE,
    "engine.zero_stage": Range(0, 3),
    "engine.lr": POSITIVE,
    "engine.weight_decay": NON_NEGATIVE,
    "engine.gradient_clipping": NON_NEGATIVE,
    "engine.lr_reference_classes": POSITIVE,
    "train.steps": POSITIVE,
    "train.workers": POSITIVE,
    "train.seed": NON_NEGATIVE,
    "train.log_every": POSITIVE,
    "train.eval_every": NON_NEGATIVE,
    "train.checkpoint_every": NON_NEGATIVE,
    "train.keep_checkpoints": NON_NEGATIVE,
    "train.max_failures": Range(-1),  # Ray Train: -1 = restart without limit
    "train.max_nonfinite_steps": POSITIVE,
    "train.collective_timeout_s": POSITIVE,
    "eval.recall_at": POSITIVE,
    "eval.batch_size": POSITIVE,
    "eval.block_size": POSITIVE,
    "eval.gallery_queries": NON_NEGATIVE,
    "eval.gallery_top_k": POSITIVE,
    "engine.warmup_steps": NON_NEGATIVE,
    "engine.min_lr_ratio": SHARE,
    "memory.size": NON_NEGATIVE,
    "memory.weight": NON_NEGATIVE,
    "memory.start_step": NON_NEGATIVE,
}
"""Dotted field name -> its range."""


def check_ranges(section: Any, prefix: str) -> None:
    """Raise ``ValueError`` naming the first own field of ``section`` (the section at dotted path
    ``prefix``, e.g. ``engine``) whose value is out of range, in table order.

    Null fields (optional and unset) are not checked; a nested section (``data.procedural``)
    checks its own fields.
    """
    for name, bound in RANGES.items():
        path, _, field_name = name.rpartition(".")
        if path != prefix:
            continue
        value = getattr(section, field_name)
        values = value if isinstance(value, list) else [value]
        for item in values:
            if item is not None and not bound.contains(item):
                raise ValueError(f"{name}: expected a value {bound.describe()}, got {value}")
