"""Checks across fields of a built config: consistency, every field's range, and the component checks.

The config layer knows no component: the checks that do (registry keys, each component's settings,
what kind of balancer was chosen) come from the catalog that :mod:`mmtl.components` installs
(:mod:`mmtl.config.catalog`), which the entry points import before they load a config.
"""
from __future__ import annotations

from mmtl.config.catalog import installed_catalog
from mmtl.config.components import check_components
from mmtl.config.fields import check_ranges
from mmtl.config.schema import ExperimentConfig
from mmtl.errors import ConfigError


def validate(config: ExperimentConfig) -> None:
    """Cross-field checks that a single field's type cannot express, the component checks of the installed
    catalog, every component's settings and every field's range."""
    if not config.tasks:
        raise ConfigError("tasks must name at least one task")
    if len(set(config.tasks)) != len(config.tasks):
        raise ConfigError(f"tasks lists a task twice: {config.tasks}")
    _check_modality_names(config)
    _check_task_settings_names(config)
    installed_catalog().check(config)
    check_components(config)
    check_ranges(config)
    if config.model.width % config.model.num_heads:
        raise ConfigError(f"model.width ({config.model.width}) must be divisible by model.num_heads ({config.model.num_heads})")
    for i, source in enumerate(config.data.sources):
        if not source.path:
            raise ConfigError(f"data.sources[{i}].path is required")
        extra = sorted(set(source.tasks or []) - set(config.tasks))
        if extra:
            raise ConfigError(f"data.sources[{i}].tasks names {', '.join(extra)}, not in tasks: {', '.join(config.tasks)}")
    _validate_modalities(config)
    _validate_fsdp(config)


def _check_task_settings_names(config: ExperimentConfig) -> None:
    """``task_settings`` names tasks of the run (each entry's keys are checked against its task's settings)."""
    known = [*config.tasks, *config.finetune.add_tasks]
    for key in config.task_settings:
        if key not in known:
            raise ConfigError(f"task_settings.{key}: {key!r} is not a task of this run; tasks: {', '.join(known)}")


def _validate_fsdp(config: ExperimentConfig) -> None:
    """Settings that sharded training (train.fsdp) cannot honour (the balancer's kind: a component check)."""
    if not config.train.fsdp:
        return
    if config.train.ema_decay > 0:
        raise ConfigError("train.ema_decay > 0 is not supported with train.fsdp=true; use train.fsdp=false (DDP)")
    if config.train.eval_every > 0:
        raise ConfigError("train.eval_every > 0 (validation on rank 0) is not supported with train.fsdp=true; "
                          "use train.eval_every=0 and `mmtl eval` on the checkpoints, or train.fsdp=false")


def _check_modality_names(config: ExperimentConfig) -> None:
    """``model.modalities`` holds only modalities beyond image and text."""
    for name in config.model.modalities:
        if name in ("image", "text"):
            raise ConfigError(f"model.modalities.{name}: image and text are configured in model.image / model.text")


def _validate_modalities(config: ExperimentConfig) -> None:
    """What extra modalities stand for or start from is a modality of the model."""
    present = ("image", "text", *config.model.modalities)
    for name, modality in config.model.modalities.items():
        if modality.stands_for and modality.stands_for not in present:
            raise ConfigError(f"model.modalities.{name}.stands_for must name a modality of the model "
                              f"(image, text, {', '.join(config.model.modalities)}); got {modality.stands_for!r}")
        if modality.init_from and modality.init_from not in present:
            raise ConfigError(f"model.modalities.{name}.init_from must name a modality of the model; "
                              f"got {modality.init_from!r}")
