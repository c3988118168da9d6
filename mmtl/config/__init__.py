"""Typed experiment configuration: dataclass schema, YAML values, dotted CLI overrides, clear errors.

``schema`` and ``model`` hold the dataclasses (allowed values declared on their fields, see
``fields``), ``presets`` the model presets, ``parsing`` the reading of YAML and overrides, and
``validation`` the checks across fields.
"""
from mmtl.config.fields import Range, check_ranges, choice, setting
from mmtl.config.model import (
    DecoderConfig, FusionConfig, ImageEncoderConfig, ModalityConfig, ModelConfig, TextEncoderConfig,
)
from mmtl.config.parsing import (
    build_dataclass, deep_merge, load_config, parse_override, read_yaml_tree, resolve_config, save_config,
)
from mmtl.config.presets import MODEL_PRESETS
from mmtl.config.schema import (
    GENERATION_BOUNDS, BalancerConfig, DataConfig, EvalConfig, ExperimentConfig, FinetuneConfig, GenerationConfig,
    SourceConfig, SyntheticConfig, TrainConfig, ValidationConfig, join_shard_list, validate_generation,
)
from mmtl.config.validation import validate

__all__ = [
    "GENERATION_BOUNDS", "MODEL_PRESETS", "BalancerConfig", "DataConfig", "DecoderConfig", "EvalConfig",
    "ExperimentConfig", "FinetuneConfig", "FusionConfig", "GenerationConfig", "ImageEncoderConfig",
    "ModalityConfig", "ModelConfig", "Range", "SourceConfig", "SyntheticConfig", "TextEncoderConfig",
    "TrainConfig", "ValidationConfig", "build_dataclass", "check_ranges", "choice", "deep_merge",
    "join_shard_list", "load_config", "parse_override", "read_yaml_tree", "resolve_config",
    "save_config", "setting", "validate", "validate_generation",
]
