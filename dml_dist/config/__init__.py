"""Typed experiment configuration: YAML -> frozen pydantic models that validate themselves as they are built."""

from dml_dist.config.data_sections import DataConfig, ProceduralDataConfig
from dml_dist.config.loader import apply_overrides, config_to_dict, load_config, save_config
from dml_dist.config.loss_section import LossConfig
from dml_dist.config.mining_memory import MemoryConfig, MiningConfig
from dml_dist.config.schema import ExperimentConfig
from dml_dist.config.sections import (
    BatchConfig,
    EngineConfig,
    EvalConfig,
    MetricsConfig,
    ModelConfig,
    TrainConfig,
)

__all__ = [
    "BatchConfig",
    "DataConfig",
    "EngineConfig",
    "EvalConfig",
    "ExperimentConfig",
    "LossConfig",
    "MemoryConfig",
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
