"""The built-in components, and what the config layer needs to know of them.

Importing this module registers every built-in component in ``mmtl.registry`` and installs the
:class:`mmtl.config.Catalog` that config validation reads: the registry each kind of config section
selects from, and :func:`check_config`, the checks of a config that need the components themselves.
The entry points (the CLI, the Python API, quickstart, inference, finetune) import it before they
load a config.
"""
from __future__ import annotations

import dataclasses
import logging

import mmtl.balancing.conflict  # noqa: F401
import mmtl.balancing.gradient  # noqa: F401
import mmtl.balancing.stochastic  # noqa: F401
import mmtl.balancing.weighting  # noqa: F401
import mmtl.models.encoders  # noqa: F401
import mmtl.models.fusion  # noqa: F401
import mmtl.modalities  # noqa: F401
import mmtl.tasks  # noqa: F401  (every built-in task, in the order mmtl/tasks/__init__.py registers them)
from mmtl.config import Catalog, ExperimentConfig, ignored_settings, install_catalog, selected, settings_class
from mmtl.errors import ConfigError
from mmtl.registry import (
    BALANCERS, FUSIONS, IMAGE_ENCODERS, MODALITIES, MODALITY_ENCODERS, TASKS, TEXT_ENCODERS, Registry,
)

log = logging.getLogger(__name__)


def check_config(config: ExperimentConfig) -> None:
    """The checks of ``config`` that read the registered components: the tasks, modality encoders and
    additions it names exist, and the balancer's settings fit the run (``mmtl.config.validate`` runs it)."""
    for task in [*config.tasks, *config.finetune.add_tasks]:
        TASKS.get(task)
    for modality in config.model.modalities.values():
        if modality.encoder:
            MODALITY_ENCODERS.get(modality.encoder)
    for name in config.finetune.add_modalities:
        MODALITIES.get(name)
    _check_balancer(config)


def _check_balancer(config: ExperimentConfig) -> None:
    """Task weights name known tasks (a typo fails; a task not in ``tasks`` keeps its weight unused, so tuned
    weights survive ``tasks=`` picking a subset, and a balancer that reads no weights ignores them with a
    warning); any other setting of another balancer is an error;
    sharded training refuses a gradient balancer."""
    balancer, settings = selected(config.balancer, "balancer")
    for task in getattr(settings, "weights", None) or config.balancer.options.get("weights") or {}:
        TASKS.get(task)
    for key in ignored_settings(config.balancer, "balancer"):
        readers = ", ".join(repr(name) for name, other in BALANCERS.items()
                            if key.rpartition(".")[2] in _setting_names(other))
        if key.rpartition(".")[2] != "weights":  # only tuned weights outlive a change of balancer
            own = sorted(_setting_names(balancer))
            raise ConfigError(f"{key} is not a setting of balancer {config.balancer.name!r} (balancers such as "
                              f"{readers} read it); its settings: {', '.join(own) or 'none'}")
        log.warning("%s is ignored by balancer %r (only balancers such as %s read it)", key, config.balancer.name,
                    readers)
    if config.train.fsdp and balancer.kind == "gradient":
        raise ConfigError(f"balancer.name={config.balancer.name} needs per-task gradients of whole parameters, "
                          "which train.fsdp=true shards; use train.fsdp=false (DDP) or a loss-weighting balancer")


def _setting_names(component: type) -> set[str]:
    return {f.name for f in dataclasses.fields(settings_class(component))}


REGISTRIES: tuple[Registry, ...] = (IMAGE_ENCODERS, TEXT_ENCODERS, FUSIONS, MODALITIES, BALANCERS, TASKS)
install_catalog(Catalog({registry.kind: registry for registry in REGISTRIES}, check_config))
