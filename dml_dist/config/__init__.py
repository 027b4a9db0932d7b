"""Typed experiment configuration: YAML -> dataclasses, validated once at load."""

from dml_dist.config.loader import apply_overrides, config_to_dict, load_config, save_config
from dml_dist.config.schema import (
    BatchConfig,
    DataConfig,
    EngineConfig,
    EvalConfig,
    ExperimentConfig,
    LossConfig,
    MetricsConfig,
    MiningConfig,
    ModelConfig,
    ProceduralDataConfig,
    TrainConfig,
)

__all__ = [
    "BatchConfig",
    "DataConfig",
    "EngineConfig",
    "EvalConfig",
    "ExperimentConfig",
    "LossConfig",
    "MetricsConfig",
    "MiningConfig",
    "ModelConfig",
    "ProceduralDataConfig",
    "TrainConfig",
    "apply_overrides",
    "config_to_dict",
    "load_config",
    "save_config",
]
