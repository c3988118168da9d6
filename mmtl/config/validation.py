"""Checks across fields of a built config: registry keys, component settings, ranges (declared on the fields),
consistency.

Registry keys are looked up in :mod:`mmtl.registry`, which the entry points fill by importing
:mod:`mmtl.components` before they load a config.
"""
from __future__ import annotations

import logging

from mmtl.config.components import check_components
from mmtl.config.fields import check_ranges
from mmtl.config.schema import ExperimentConfig
from mmtl.errors import ConfigError
from mmtl.registry import BALANCERS, FUSIONS, MODALITIES, MODALITY_ENCODERS, TASKS

log = logging.getLogger(__name__)


def _check_balancer_weights(config: ExperimentConfig) -> None:
    """Every name in ``balancer.weights`` is a known task (a typo fails); a task not in ``tasks`` keeps its
    weight unused, so a config's tuned weights survive ``tasks=`` picking a subset. A balancer that
    does not read the weights says so."""
    for task in config.balancer.weights:
        TASKS.get(task)
    if config.balancer.weights and not getattr(BALANCERS.get(config.balancer.name), "reads_weights", False):
        log.warning("balancer.weights is ignored by balancer %r (only balancers such as 'fixed' read it)",
                    config.balancer.name)


def validate(config: ExperimentConfig) -> None:
    """Cross-field checks that a single field's type cannot express, and every field's range."""
    if not config.tasks:
        raise ConfigError("tasks must name at least one task")
    for task in config.tasks:
        TASKS.get(task)
    if len(set(config.tasks)) != len(config.tasks):
        raise ConfigError(f"tasks lists a task twice: {config.tasks}")
    _check_modality_names(config)
    FUSIONS.get(config.model.fusion.name)
    check_components(config)
    check_ranges(config)
    _check_balancer_weights(config)
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
    _validate_task_settings(config)


def _validate_task_settings(config: ExperimentConfig) -> None:
    """``task_settings`` names tasks of the run, each checked against its task class's settings dataclass."""
    known = [*config.tasks, *config.finetune.add_tasks]
    for key, values in config.task_settings.items():
        if key not in known:
            raise ConfigError(f"task_settings.{key}: {key!r} is not a task of this run; tasks: {', '.join(known)}")
        TASKS.get(key).parse_settings(values, f"task_settings.{key}")


def _validate_fsdp(config: ExperimentConfig) -> None:
    """Settings that sharded training (train.fsdp) cannot honour."""
    if not config.train.fsdp:
        return
    if BALANCERS.get(config.balancer.name).kind == "gradient":
        raise ConfigError(f"balancer.name={config.balancer.name} needs per-task gradients of whole parameters, "
                          "which train.fsdp=true shards; use train.fsdp=false (DDP) or a loss-weighting balancer")
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
    """Extra modalities and fine-tuning additions name registered components."""
    present = ("image", "text", *config.model.modalities)
    for name, modality in config.model.modalities.items():
        if modality.encoder:
            MODALITY_ENCODERS.get(modality.encoder)
        if modality.stands_for and modality.stands_for not in present:
            raise ConfigError(f"model.modalities.{name}.stands_for must name a modality of the model "
                              f"(image, text, {', '.join(config.model.modalities)}); got {modality.stands_for!r}")
        if modality.init_from and modality.init_from not in present:
            raise ConfigError(f"model.modalities.{name}.init_from must name a modality of the model; "
                              f"got {modality.init_from!r}")
    for name in config.finetune.add_modalities:
        MODALITIES.get(name)
    for name in config.finetune.add_tasks:
        TASKS.get(name)
