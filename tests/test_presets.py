"""Presets are general: the small-image preset builds and trains a step of every task."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from mmtl.config import MODEL_PRESETS, load_config
from mmtl.training.run import train
from tests.conftest import micro_overrides


@pytest.mark.parametrize("task", ["recognition", "captioning", "summarization"])
def test_nano_preset_trains_a_step_of_each_task(micro_data: Path, tmp_path: Path, one_thread, task: str) -> None:
    # micro_data holds 32-pixel images, nano's own size
    config = load_config(None, [*micro_overrides(micro_data, tmp_path / "run", steps=1), "model.preset=nano",
                                f"tasks=[{task}]"])
    assert config.model.image.image_size == 32 and config.model.width == MODEL_PRESETS["nano"]["width"]
    result = train(config)
    assert math.isfinite(result.final_losses[task]) and result.final_losses[task] > 0
    # a 4x4 feature map at 32 pixels: the preset's ResNet keeps stride 8, so the fusion sees 16 image tokens
    assert result.components.model.encoders["image"].position.shape == (16, config.model.width)
