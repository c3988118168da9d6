"""Typed experiment configuration: dataclass schema, YAML values, dotted CLI overrides, clear errors.

``schema`` and ``model`` hold the dataclasses (allowed values declared on their fields, see
``fields``; a section that selects a registered component declares a ``slots.Slot``, and the
component's own ``Settings`` dataclass checks its values, see ``components``; the components come from
the catalog that ``mmtl.components`` installs, see ``catalog``), ``presets`` the model
presets, ``building`` and ``parsing`` the reading of YAML and overrides, and ``validation`` the checks
across fields.
"""
from mmtl.config.budget import check_budget, preflight_checkpoint, preflight_config
from mmtl.config.building import build_dataclass
from mmtl.config.catalog import Catalog, install_catalog, installed_catalog
from mmtl.config.components import as_tree, check_components, ignored_settings, selected, settings_of
from mmtl.config.fields import Range, check_ranges, choice, setting
from mmtl.config.model import (
    DecoderConfig, FusionConfig, ImageEncoderConfig, ModalityConfig, ModelConfig, TextEncoderConfig,
)
from mmtl.config.parsing import (
    apply_overrides, deep_merge, load_config, load_saved_config, parse_override, read_yaml_tree, resolve_config,
    save_config,
)
from mmtl.config.presets import MODEL_PRESETS
from mmtl.config.schema import (
    GENERATION_BOUNDS, BalancerConfig, DataConfig, EvalConfig, ExperimentConfig, FinetuneConfig, GenerationConfig,
    SourceConfig, SyntheticConfig, TaskSettingsConfig, TrainConfig, ValidationConfig, join_shard_list,
    validate_generation,
)
from mmtl.config.slots import NoSettings, Slot, settings_class
from mmtl.config.validation import validate

__all__ = [
    "GENERATION_BOUNDS", "MODEL_PRESETS", "BalancerConfig", "Catalog", "DataConfig", "DecoderConfig", "EvalConfig",
    "ExperimentConfig", "FinetuneConfig", "FusionConfig", "GenerationConfig", "ImageEncoderConfig", "ModalityConfig",
    "ModelConfig", "NoSettings", "Range", "Slot", "SourceConfig", "SyntheticConfig", "TaskSettingsConfig",
    "TextEncoderConfig", "TrainConfig", "ValidationConfig", "apply_overrides", "as_tree", "build_dataclass",
    "check_budget", "check_components", "check_ranges", "choice", "deep_merge", "ignored_settings", "install_catalog",
    "installed_catalog", "join_shard_list", "load_config", "parse_override", "preflight_checkpoint",
    "preflight_config", "read_yaml_tree", "resolve_config", "save_config", "selected", "setting", "settings_class",
    "settings_of", "validate", "validate_generation",
]
