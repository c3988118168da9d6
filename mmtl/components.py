"""Importing this module registers every built-in component in ``mmtl.registry``.

The entry points (the CLI, quickstart, inference, finetune) import it before they load a config:
config validation looks the configured keys up in the registries.
"""
import mmtl.balancing.conflict  # noqa: F401
import mmtl.balancing.gradient  # noqa: F401
import mmtl.balancing.stochastic  # noqa: F401
import mmtl.balancing.weighting  # noqa: F401
import mmtl.models.encoders  # noqa: F401
import mmtl.models.fusion  # noqa: F401
import mmtl.modalities  # noqa: F401
import mmtl.tasks  # noqa: F401  (every built-in task, in the order mmtl/tasks/__init__.py registers them)
