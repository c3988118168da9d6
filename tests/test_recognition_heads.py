"""Recognition's settings: which registered class head reads the fused tokens, and label smoothing."""
import random

import pytest
import torch
import torch.nn.functional as F

from data_pipelines.loader import Collator, Example
from mmtl.builder import build_components
from mmtl.config import resolve_config
from mmtl.errors import ConfigError
from mmtl.models.fusion import Fused
from mmtl.models.heads import CLASS_HEADS, ClassQueryHead, PooledClassHead
from mmtl.text import Vocabulary

CLASSES = ["red circle", "blue square", "green triangle"]
VOCAB = Vocabulary.from_texts(["a red circle"])


def _parts(*overrides: str, label_mode: str = "multi"):
    config = resolve_config({}, ["model.preset=micro", "tasks=[recognition]", *overrides])
    return build_components(config, CLASSES, VOCAB, label_mode=label_mode)


def _batch(parts, labels: list[list[str]]):
    rng = random.Random(0)
    torch.manual_seed(0)
    examples = [Example(str(i), torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8), [],
                        {"recognition": parts.tasks[0].target({"labels": row}, rng)}, {"labels": row})
                for i, row in enumerate(labels)]
    return Collator(parts.tasks, 32)(examples)


def test_the_default_head_is_the_class_query_head() -> None:
    """The quickstart's model is unchanged: without the setting, recognition reads tokens by class queries."""
    parts = _parts()
    assert type(parts.model.heads["recognition"]) is ClassQueryHead
    assert parts.tasks[0].settings.head == "queries" and parts.tasks[0].settings.label_smoothing == 0.0


def test_the_pooled_head_is_an_average_of_the_valid_tokens_then_layernorm_and_linear() -> None:
    torch.manual_seed(0)
    head = PooledClassHead(8, 3)
    tokens = torch.randn(2, 5, 8)
    valid = torch.tensor([[True, True, False, False, False], [True] * 5])
    expected = torch.stack([tokens[0, :2].mean(0), tokens[1].mean(0)])
    assert torch.allclose(head(tokens, valid), head.classifier(head.norm(expected)), atol=1e-6)
    tokens[0, 2:] = 1e6  # masked tokens change nothing
    assert torch.allclose(head(tokens, valid)[0], head.classifier(head.norm(expected[0])), atol=1e-6)


def test_the_head_setting_builds_the_registered_head_and_trains() -> None:
    parts = _parts("task_settings.recognition.head=pooled")
    assert type(parts.model.heads["recognition"]) is CLASS_HEADS.get("pooled")
    batch = _batch(parts, [["red circle"], ["blue square", "green triangle"]])
    loss = parts.model(batch)["recognition"]
    loss.backward()
    assert torch.isfinite(loss) and parts.model.heads["recognition"].classifier.weight.grad.abs().sum() > 0


def test_an_unknown_head_is_a_config_error_naming_the_registered_ones() -> None:
    with pytest.raises(ConfigError, match=r"task_settings.recognition.head: unknown class head 'mlp'; valid: pooled, queries"):
        _parts("task_settings.recognition.head=mlp")
    with pytest.raises(ConfigError, match="label_smoothing"):
        _parts("task_settings.recognition.label_smoothing=1.5")


def test_label_smoothing_is_cross_entropy_with_smoothing_on_single_label_data() -> None:
    parts = _parts("task_settings.recognition.label_smoothing=0.2", label_mode="single")
    task, head = parts.tasks[0], parts.model.heads["recognition"]
    tokens, valid = torch.randn(3, 4, head.queries.shape[1]), torch.ones(3, 4, dtype=torch.bool)
    fused = Fused(tokens, valid, tokens.mean(1))
    labels = torch.tensor([0, 2, 1])
    expected = F.cross_entropy(head(tokens, valid), labels, label_smoothing=0.2)
    assert torch.allclose(task.loss(head, fused, {"labels": labels}), expected)
    assert not torch.allclose(expected, F.cross_entropy(head(tokens, valid), labels))


def test_the_classify_recipe_reads_the_image_tokens_with_the_pooled_head_and_no_trunk() -> None:
    """configs/experiment/classify.yaml: the plain loop's model (backbone, average, linear) inside mmtl,
    whatever preset is asked for; one step on single-label data trains the image encoder through the head."""
    from pathlib import Path

    from mmtl.config import load_config

    recipe = Path(__file__).parents[1] / "configs" / "experiment" / "classify.yaml"
    config = load_config(recipe, ["model.preset=micro"])
    assert config.tasks == ["recognition"] and config.model.fusion.depth == 0 and config.model.width == 32
    parts = build_components(config, CLASSES, VOCAB, label_mode="single")
    assert type(parts.model.heads["recognition"]) is PooledClassHead and parts.model.fusion.layers() == []
    loss = parts.model(_batch(parts, [["red circle"], ["green triangle"]]))["recognition"]
    loss.backward()
    # the stem (timm zero-initialises each residual branch's last norm, so the blocks' convolutions start at 0)
    assert parts.model.encoders["image"].backbone.conv1.weight.grad.abs().sum() > 0
