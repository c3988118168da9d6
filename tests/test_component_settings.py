"""One way to hold a component's settings: every registered component owns a ``Settings`` dataclass, read
flat from its config section, and configs written by earlier versions still mean what they meant."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from mmtl.components import REGISTRIES
from mmtl.config import load_saved_config, resolve_config, save_config, selected, settings_class
from mmtl.errors import ConfigError
from mmtl.registry import BALANCERS, TASKS
from mmtl.tasks.base import TaskContext
from mmtl.text import Vocabulary

TASK_NAMES = ["recognition", "captioning", "summarization"]
CONFIG_PACKAGE = Path(__file__).parents[1] / "mmtl" / "config"


def test_every_registered_component_owns_a_settings_dataclass() -> None:
    for registry in REGISTRIES:
        for name, component in registry.items():
            settings = settings_class(component)
            assert dataclasses.is_dataclass(settings), (registry.kind, name)
            settings()  # every setting has a default


def test_the_config_layer_reads_no_registry_of_its_own() -> None:
    """Core gets the components from the catalog that mmtl.components installs: it imports no registry."""
    for path in CONFIG_PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "mmtl.registry":
                assert [alias.name for alias in node.names] == ["Registry"], path.name


def _saved(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def test_a_balancer_saved_with_top_level_weights_and_options_keeps_its_weights(tmp_path: Path) -> None:
    """config.yaml as versions before the flat shape wrote it: ``weights`` beside ``options``."""
    earlier = {"tasks": TASK_NAMES, "balancer": {"name": "fixed", "weights": {"recognition": 0.1, "captioning": 2.0},
                                                 "on": "params", "update_every": 1, "batched_backward": False,
                                                 "options": {}}}
    config = load_saved_config(_saved(tmp_path, earlier))
    balancer = BALANCERS.get(config.balancer.name)(config.tasks, config.balancer)
    assert torch.allclose(balancer.weights, torch.tensor([0.1, 2.0, 1.0]))
    save_config(config, tmp_path / "again.yaml")  # the flat shape it is saved in now reads back the same
    again = load_saved_config(tmp_path / "again.yaml")
    assert yaml.safe_load((tmp_path / "again.yaml").read_text())["balancer"]["weights"] == {"recognition": 0.1,
                                                                                           "captioning": 2.0}
    assert torch.equal(BALANCERS.get("fixed")(again.tasks, again.balancer).weights, balancer.weights)


def test_earlier_nested_balancer_options_mean_the_flat_keys() -> None:
    nested = resolve_config({"balancer": {"name": "cagrad", "options": {"c": 0.5}}})
    flat = resolve_config({}, ["balancer.name=cagrad", "balancer.c=0.5"])
    assert nested.to_dict() == flat.to_dict() and selected(flat.balancer, "balancer")[1].c == 0.5
    with pytest.raises(ConfigError, match="unknown config key 'balancer.options.cc'; valid keys here: .*iterations"):
        resolve_config({"balancer": {"name": "cagrad", "options": {"cc": 0.5}}})


def test_weights_are_read_by_the_balancers_whose_settings_hold_them(caplog: pytest.LogCaptureFixture) -> None:
    given = ["balancer.weights.captioning=3"]
    caplog.clear()
    equal = resolve_config({}, ["balancer.name=equal", *given])
    assert "balancer.weights is ignored by balancer 'equal'" in caplog.text
    assert torch.equal(BALANCERS.get("equal")(TASK_NAMES, equal.balancer).weights, torch.ones(3))
    fixed = resolve_config({}, ["balancer.name=fixed", *given])
    assert BALANCERS.get("fixed")(TASK_NAMES, fixed.balancer).weights.tolist() == [1.0, 3.0, 1.0]
    with pytest.raises(ConfigError, match="balancer.weights must be a mapping"):
        resolve_config({}, ["balancer.name=pcgrad", "balancer.weights=3"])


def _summarization(config) -> object:
    context = TaskContext([], Vocabulary([320, 321, 322]), config.model, task_settings=config.task_settings)
    return TASKS.get("summarization")(context)


def test_task_settings_saved_by_an_earlier_version_load_with_the_same_meaning(tmp_path: Path) -> None:
    earlier = {"tasks": ["summarization"], "task_settings": {"summarization": {"mode": "extractive", "sentences": 2}}}
    config = load_saved_config(_saved(tmp_path, earlier))
    task = _summarization(config)
    assert (task.settings.mode, task.settings.sentences, task.settings.max_sentences) == ("extractive", 2, 64)
    assert task.extractor is not None
    save_config(config, tmp_path / "again.yaml")
    assert load_saved_config(tmp_path / "again.yaml").to_dict() == config.to_dict()
    assert _summarization(resolve_config({}, ["tasks=[summarization]"])).extractor is None  # the default mode


def test_a_task_setting_typo_names_the_key_and_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'task_settings.summarization.mdoe'; "
                                          r"valid keys here: label_smoothing, max_sentences, mode, repetition_penalty, sentences$"):
        resolve_config({}, ["task_settings.summarization.mdoe=extractive"])
    with pytest.raises(ConfigError, match="task_settings.summarization.sentences must be an integer"):
        resolve_config({}, ["task_settings.summarization.sentences=two"])


@pytest.mark.parametrize("override", ["balancer.c=0.5", "balancer.options.c=0.5"])
def test_a_setting_of_another_balancer_is_refused_as_before(override: str) -> None:
    # only weights survive a change of balancer (tuned weights kept across runs); any other setting the
    # chosen balancer does not read is an error naming the key, as it was before settings were flattened
    with pytest.raises(ConfigError, match=r"balancer\.(options\.)?c.*pcgrad"):
        resolve_config({}, ["balancer.name=pcgrad", override])
