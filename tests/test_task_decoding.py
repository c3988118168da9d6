"""Decoding options a task sets for itself: summarization's repetition penalty (issue #28)."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from mmtl.config import ExperimentConfig, GenerationConfig, ModelConfig, TaskSettingsConfig, load_config
from mmtl.errors import ConfigError
from mmtl.models.fusion import Fused
from mmtl.tasks.base import TaskContext
from mmtl.tasks.captioning import CaptioningTask
from mmtl.tasks.summarization import SummarizationTask
from mmtl.text import Vocabulary

TEXTS = ["a red circle above a blue square", "we propose a new method for graphs"]


class SpyHead:
    """A decoder head that records the decoding config it is handed and writes nothing."""

    def __init__(self) -> None:
        self.configs: list[GenerationConfig] = []

    def generate(self, memory: torch.Tensor, memory_valid: torch.Tensor, config: GenerationConfig,
                 **kwargs: Any) -> torch.Tensor:
        self.configs.append(config)
        return torch.zeros(memory.shape[0], 1, dtype=torch.long)


@dataclasses.dataclass
class Options:
    generation: GenerationConfig


def _penalty_used(task_type: type, generation: GenerationConfig, settings: dict | None = None) -> float:
    sections = {task_type.name: TaskSettingsConfig(settings)} if settings else {}
    task = task_type(TaskContext([], Vocabulary.from_texts(TEXTS), ModelConfig(), task_settings=sections))
    head = SpyHead()
    fused = Fused(torch.zeros(1, 3, 4), torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 4))
    task.predict(head, fused, Options(generation))
    return head.configs[0].repetition_penalty


def test_an_unset_repetition_penalty_is_each_tasks_own() -> None:
    unset = GenerationConfig()
    assert unset.repetition_penalty is None
    assert _penalty_used(SummarizationTask, unset) == 1.8
    assert _penalty_used(CaptioningTask, unset) == 1.0
    assert _penalty_used(SummarizationTask, unset, {"repetition_penalty": 1.2}) == 1.2


def test_a_repetition_penalty_set_for_the_run_applies_to_every_task() -> None:
    for task_type in (SummarizationTask, CaptioningTask):
        assert _penalty_used(task_type, GenerationConfig(repetition_penalty=1.0)) == 1.0
        assert _penalty_used(task_type, GenerationConfig(repetition_penalty=1.3), {"repetition_penalty": 2.0}) == 1.3


def test_the_penalties_load_from_a_config_and_are_range_checked() -> None:
    config = load_config(None, ["task_settings.summarization.repetition_penalty=1.5"])
    assert config.eval.generation.repetition_penalty is None
    assert config.task_settings["summarization"].options["repetition_penalty"] == 1.5
    assert load_config(None, ["eval.generation.repetition_penalty=1.2"]).eval.generation.repetition_penalty == 1.2
    assert load_config(None, ["eval.generation.repetition_penalty=null"]).eval.generation.repetition_penalty is None
    for override in ("eval.generation.repetition_penalty=0", "task_settings.summarization.repetition_penalty=0"):
        with pytest.raises(ConfigError, match="repetition_penalty"):
            load_config(None, [override])


def test_a_config_saved_with_the_penalty_unset_loads_unset(tmp_path) -> None:
    from mmtl.config import save_config

    path = tmp_path / "config.yaml"
    save_config(ExperimentConfig(), path)
    assert load_config(path, []).eval.generation.repetition_penalty is None


def test_a_bad_task_penalty_on_the_command_line_is_one_line_and_exit_2(capsys) -> None:
    from mmtl.cli import main

    assert main(["train", "task_settings.summarization.repetition_penalty=0", "train.steps=1"]) == 2
    err = capsys.readouterr().err
    assert "task_settings.summarization.repetition_penalty must be in (0, 100]" in err
    assert "Traceback" not in err and err.count("\n") == 1
