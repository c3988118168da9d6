"""The standard training run: a :class:`Trainer` that validates as ``config.validation`` says."""
from __future__ import annotations

from pathlib import Path

from data_pipelines.pipes import allow_pipes
from mmtl.builder import Components
from mmtl.config import ExperimentConfig
from mmtl.training.loop import Trainer, TrainResult
from mmtl.training.validation import Validator


def make_trainer(config: ExperimentConfig, resume: str | None = None, components: Components | None = None,
                 resume_command: str | None = None) -> Trainer:
    """A :class:`Trainer` whose run validates as ``config.validation`` says (the standard run).

    ``config`` is the user's own: its ``data.allow_pipe`` decides whether ``pipe:`` sources may run."""
    allow_pipes(config.data.allow_pipe)
    return Trainer(config, resume, components, resume_command, Validator(config, Path(config.output_dir)))


def train(config: ExperimentConfig, resume: str | None = None) -> TrainResult:
    """Train a model as ``config`` says (optionally resuming), validating it, and return the result."""
    return make_trainer(config, resume).run()
