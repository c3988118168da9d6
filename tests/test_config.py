import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from mmtl.builder import build_components
from mmtl.config import MODEL_PRESETS, ExperimentConfig, Range, load_config, resolve_config
from mmtl.errors import ConfigError
from mmtl.text import Vocabulary

CONFIGS = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))


def test_defaults_are_the_quickstart_with_tiny_preset_applied() -> None:
    config = resolve_config({})
    assert config.model.preset == "tiny"
    assert config.model.width == MODEL_PRESETS["tiny"]["width"]
    assert config.model.image.timm_kwargs == MODEL_PRESETS["tiny"]["image"]["timm_kwargs"]
    assert config.tasks == ["recognition", "captioning", "summarization"]


def test_overrides_are_typed_and_beat_preset_and_file() -> None:
    config = resolve_config({"model": {"preset": "small", "width": 64}}, ["train.steps=7", "model.num_heads=2", "train.lr=1e-3"])
    assert config.train.steps == 7 and isinstance(config.train.steps, int)
    assert config.model.width == 64  # file value beats the preset
    assert config.model.text.depth == MODEL_PRESETS["small"]["text"]["depth"]  # preset fills the rest
    assert config.train.lr == pytest.approx(1e-3)


def test_user_kwargs_replace_preset_kwargs_whole() -> None:
    config = resolve_config({}, ["model.image.timm_model=vit_tiny_patch16_224",
                                 "model.image.timm_kwargs={img_size: 64, patch_size: 8, depth: 1}"])
    assert config.model.image.timm_kwargs == {"img_size": 64, "patch_size": 8, "depth": 1}


@pytest.mark.parametrize("override, fragment", [
    ("train.stpes=3", "train.stpes"),
    ("trian.steps=3", "trian"),
    ("train.steps=many", "integer"),
    ("train.precision=fp8", "fp32"),
    ("tasks=[recognition,dancing]", "dancing"),
    ("model.preset=huge", "micro"),
    ("model.fusion.name=magic", "single_stream"),
    ("balancer.name=nope", "uncertainty"),
    ("train.steps=0", "positive"),
    ("model.num_heads=3", "divisible"),
])
def test_bad_values_name_the_key_and_valid_choices(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        resolve_config({}, [override])


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config({"train": {"stepz": 1}})
    assert "train.stepz" in str(info.value) and "steps" in str(info.value)


def test_missing_file_and_bad_yaml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_include_merges_before_own_values(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"train": {"steps": 5, "lr": 0.1}}))
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({"include": ["base.yaml"], "train": {"steps": 9}}))
    config = load_config(tmp_path / "exp.yaml")
    assert (config.train.steps, config.train.lr) == (9, 0.1)


def test_quickstart_yaml_equals_builtin_defaults() -> None:
    root = Path(__file__).parent.parent / "configs" / "experiment" / "quickstart.yaml"
    assert load_config(root).to_dict() == resolve_config({}).to_dict()


def test_there_are_configs() -> None:
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_config_loads_and_builds(path: Path) -> None:
    config = load_config(path)
    parts = build_components(config, ["red circle", "blue square"], Vocabulary([320, 321, 322]))
    assert parts.model.parameter_report()["total"] > 0
    assert [t.name for t in parts.tasks] == config.tasks


def _ranged_fields(cls: type, prefix: str = "") -> list[tuple[str, Range]]:
    """(dotted key, range) of every field with a declared range in the dataclass tree of ``cls``."""
    hints = typing.get_type_hints(cls)
    found = []
    for spec in dataclasses.fields(cls):
        key = f"{prefix}.{spec.name}" if prefix else spec.name
        if "range" in spec.metadata:
            found.append((key, spec.metadata["range"]))
        if dataclasses.is_dataclass(hints[spec.name]):
            found += _ranged_fields(hints[spec.name], key)
    return found


@pytest.mark.parametrize("key, rule", _ranged_fields(ExperimentConfig))
def test_every_declared_range_is_checked(key: str, rule: Range) -> None:
    """The one range check covers each field that declares a range: a value just outside it is refused."""
    outside = rule.low - 1 if rule.low is not None else rule.high + 1
    if rule.low is not None and rule.low_open:
        outside = rule.low
    with pytest.raises(ConfigError, match=re.escape(f"{key} must be {rule.describe()}, got")):
        resolve_config({}, [f"{key}={outside}"])


def test_range_check_reaches_list_items() -> None:
    with pytest.raises(ConfigError, match=re.escape("data.sources[1].weight must be >= 0, got -1.0")):
        resolve_config({"data": {"sources": [{"path": "a"}, {"path": "b", "weight": -1}]}})


def test_config_layer_imports_no_component() -> None:
    """mmtl.config is core: importing it loads neither torch nor the components; an empty registry says why."""
    code = ("import sys\nfrom mmtl.config import load_config\n"
            "assert 'torch' not in sys.modules and 'mmtl.components' not in sys.modules\n"
            "load_config(None)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "no task is registered; import mmtl.components" in result.stderr
