"""The whole experiment config, ``ExperimentConfig``: its sections and the rules between them.

A section checks its own fields when it is built (``sections.py``, ``data_sections.py``,
``mining_memory.py``); this module holds only the rules that involve two sections, checked (by a
section validator, after every section is valid) when an ``ExperimentConfig`` is built (``load_config`` builds one from YAML). Checks that need the
data set (N against the number of training classes) run where the data set is opened.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from dml_dist.config.credentials import refuse_credentials_in_config
from dml_dist.config.data_sections import DataConfig
from dml_dist.config.fields import Section
from dml_dist.config.loss_section import LossConfig
from dml_dist.config.mining_memory import MemoryConfig, MiningConfig
from dml_dist.config.sections import (
    BatchConfig,
    EngineConfig,
    EvalConfig,
    MetricsConfig,
    ModelConfig,
    TrainConfig,
)


class ExperimentConfig(Section):
    """A whole experiment, as written in ``configs/*.yaml``."""

    data: DataConfig = Field(default_factory=DataConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    mining: MiningConfig = Field(default_factory=MiningConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)

    @model_validator(mode="after")
    def _check_across_sections(self) -> ExperimentConfig:
        if self.model.norm == "batch" and self.batch.chunk_size > 0:
            raise ValueError(
                "model.norm: batch normalization over the global batch needs the whole batch in one forward; "
                "set batch.chunk_size: 0 or model.norm: group"
            )
        timm_global_bn = self.model.backbone.startswith("timm/") and self.model.batch_norm == "global"
        if timm_global_bn and self.batch.chunk_size > 0:
            raise ValueError(
                "model.batch_norm: global batch norm needs the whole batch in one forward; set batch.chunk_size: 0 "
                "or model.batch_norm: frozen (the same network for a backbone without BatchNorm, such as a ViT)"
            )
        if self.batch.num_classes % self.train.workers != 0:
            raise ValueError(
                f"batch.num_classes: the global batch of {self.batch.num_classes} classes must divide "
                f"evenly among train.workers={self.train.workers} workers"
            )
        if self.engine.warmup_steps >= self.train.steps and self.engine.schedule != "constant":
            raise ValueError(
                f"engine.warmup_steps: {self.engine.warmup_steps} warm-up steps leave no decay within "
                f"train.steps={self.train.steps}"
            )
        if self.model.in_channels != self.data.channels:
            raise ValueError(
                f"model.in_channels: the model takes {self.model.in_channels} channels but "
                f"data.channels is {self.data.channels}; set both to the same value"
            )
        if self.data.mode == "streaming" and self.mining.enabled:
            raise ValueError(
                "data.mode: streaming trains on the classes the stream fills first, so the mining service "
                "cannot choose them; set mining.enabled: false (or data.mode: indexed)"
            )
        self._check_memory()
        refuse_credentials_in_config(self)  # a URI with a secret in it, in any field (config/credentials.py)
        return self

    def _check_memory(self) -> None:
        """Memory holds at least one global batch, and the loss takes memory."""
        memory, loss = self.memory, self.loss
        if memory.size == 0:
            return
        global_batch = self.batch.num_classes * self.batch.images_per_class
        if memory.size < global_batch:
            raise ValueError(
                f"memory.size: expected 0 or at least the global batch of {global_batch} rows, got {memory.size}"
            )
        from dml_dist.losses.registry import build_loss

        built = build_loss(loss.name, **loss.params)
        if not built.takes_memory:
            raise ValueError(f"memory: loss {loss.name} takes no memory: {built.memory_refusal}")
