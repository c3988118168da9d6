import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from mmtl.builder import build_components
from mmtl.config import MODEL_PRESETS, ExperimentConfig, Range, load_config, resolve_config, selected
from mmtl.errors import ConfigError
from mmtl.text import Vocabulary

CONFIGS = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))


def test_defaults_are_the_quickstart_with_tiny_preset_applied() -> None:
    config = resolve_config({})
    assert config.model.preset == "tiny"
    assert config.model.width == MODEL_PRESETS["tiny"]["width"]
    assert selected(config.model.image, "model.image")[1].timm_kwargs == MODEL_PRESETS["tiny"]["image"]["timm_kwargs"]
    assert config.tasks == ["recognition", "captioning", "summarization"]


def test_overrides_are_typed_and_beat_preset_and_file() -> None:
    config = resolve_config({"model": {"preset": "small", "width": 64}}, ["train.steps=7", "model.num_heads=2", "train.lr=1e-3"])
    assert config.train.steps == 7 and isinstance(config.train.steps, int)
    assert config.model.width == 64  # file value beats the preset
    # the preset fills the rest
    assert selected(config.model.text, "model.text")[1].depth == MODEL_PRESETS["small"]["text"]["depth"]
    assert config.train.lr == pytest.approx(1e-3)


def test_user_kwargs_replace_preset_kwargs_whole() -> None:
    config = resolve_config({}, ["model.image.timm_model=vit_tiny_patch16_224",
                                 "model.image.timm_kwargs={img_size: 64, patch_size: 8, depth: 1}"])
    assert selected(config.model.image, "model.image")[1].timm_kwargs == {"img_size": 64, "patch_size": 8, "depth": 1}


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
    from mmtl.quickstart import QUICKSTART_SETTINGS

    root = Path(__file__).parent.parent / "configs" / "experiment" / "quickstart.yaml"
    assert load_config(root).to_dict() == resolve_config(QUICKSTART_SETTINGS).to_dict()
    assert load_config(root).model.decoder.shared is True


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
    assert "no component is registered" in result.stderr and "import mmtl.components" in result.stderr


# ------------------------------------------------------------- settings that live with their component

def _component_ranges() -> list[tuple[str, list[str], str, Range]]:
    """(id, overrides selecting the component, dotted key, range) of each ranged field of a registered
    component's own settings (image and text encoders, modalities, balancers)."""
    import mmtl.components  # noqa: F401  (fills the registries the slots select from)
    from mmtl.registry import BALANCERS, IMAGE_ENCODERS, MODALITIES, TEXT_ENCODERS

    sections = [(IMAGE_ENCODERS, "model.image", "model.image.name={}", ""),
                (TEXT_ENCODERS, "model.text", "model.text.name={}", ""),
                (BALANCERS, "balancer.options", "balancer.name={}", ""),
                (MODALITIES, "model.modalities.{}", "", "model.modalities.{}.stands_for=image")]
    found = []
    for registry, prefix, select, extra in sections:
        for name, component in registry.items():
            for spec in dataclasses.fields(component.Settings):
                if "range" in spec.metadata:
                    key = f"{prefix.format(name)}.{spec.name}"
                    chosen = [o.format(name) for o in (select, extra) if o]
                    found.append((key, chosen, key, spec.metadata["range"]))
    return found


@pytest.mark.parametrize("name, chosen, key, rule", _component_ranges(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_component_setting_range_is_checked(name: str, chosen: list[str], key: str, rule: Range) -> None:
    outside = rule.low - 1 if rule.low is not None else rule.high + 1
    if rule.low is not None and rule.low_open:
        outside = rule.low
    with pytest.raises(ConfigError, match=re.escape(f"{key} must be {rule.describe()}, got")):
        resolve_config({}, [*chosen, f"{key}={outside}"])


@pytest.mark.parametrize("override, message", [
    ("model.image.timm_modle=resnet18", "unknown config key 'model.image.timm_modle'; valid keys here: feature_pool, "
                                        "image_size, name, pretrained_path, timm_kwargs, timm_model"),
    ("model.text.dpeth=2", "unknown config key 'model.text.dpeth'; valid keys here: context_length, depth, name,"),
    ("model.modalities.audio.n_mel=32", "unknown config key 'model.modalities.audio.n_mel'; valid keys here: channels, "
                                        "encoder, hop_length, init_from, n_fft, n_mels, sample_rate, seconds"),
    ("model.image.options.timm_model=resnet18", "unknown config key 'model.image.options'"),
    ("balancer.options.cc=1", "unknown config key 'balancer.options.cc'"),
    ("model.image.feature_pool=two", "model.image.feature_pool must be an integer, got 'two'"),
    ("model.text.depth=[1]", "model.text.depth must be an integer"),
    ("model.modalities.audio.seconds=long", "model.modalities.audio.seconds must be a number"),
    # a setting of the image encoder that is not chosen: ignored, but its type still holds
    ("model.image.open_clip_kwargs=3", "model.image.open_clip_kwargs must be a mapping"),
    ("model.modalities.audio.size=big", "model.modalities.audio.size must be an integer"),
])
def test_component_settings_are_checked_against_the_component(override: str, message: str) -> None:
    extra = ["balancer.name=cagrad"] if override.startswith("balancer") else []
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        resolve_config({}, [*extra, override])
    assert "\n" not in str(info.value)


def test_component_settings_read_by_their_component_keep_their_flat_keys(tmp_path: Path) -> None:
    from mmtl.config import save_config, settings_of
    from mmtl.modalities.audio import AudioModality

    config = resolve_config({}, ["model.image.timm_kwargs.output_stride=8", "model.image.feature_pool=3",
                                 "model.modalities.audio.n_mels=32", "balancer.name=cagrad", "balancer.options.c=0.5"])
    image = selected(config.model.image, "model.image")[1]
    assert (image.timm_model, image.timm_kwargs, image.feature_pool) == ("resnet18", {"output_stride": 8}, 3)
    audio = settings_of(config.model.modalities["audio"], AudioModality, "model.modalities.audio")
    assert (audio.n_mels, audio.sample_rate) == (32, 8000)
    tree = config.to_dict()
    assert tree["model"]["image"]["feature_pool"] == 3 and "options" not in tree["model"]["image"]
    assert tree["model"]["modalities"]["audio"]["n_mels"] == 32 and tree["model"]["modalities"]["audio"]["n_fft"] == 256
    assert (tree["balancer"]["c"], tree["balancer"]["iterations"]) == (0.5, 20) and "options" not in tree["balancer"]
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").to_dict() == tree


def test_a_config_saved_with_every_encoders_keys_loads_with_the_same_meaning() -> None:
    """Saved configs hold the keys of the components not chosen too (the earlier union sections did), and
    presets set the default encoder's keys: they are accepted and left to their component."""
    saved = {"model": {
        "image": {"name": "timm", "timm_model": "resnet18", "timm_kwargs": {"output_stride": 8}, "image_size": 64,
                  "pretrained_path": None, "feature_pool": 2, "open_clip_model": "ViT-B-32", "open_clip_kwargs": {}},
        "text": {"name": "transformer", "depth": 1, "context_length": 128, "vocab": "dataset",
                 "open_clip_model": "ViT-B-32", "open_clip_kwargs": {}, "pretrained_path": None,
                 "bidirectional": False},
        "modalities": {"depth": {"encoder": "", "stands_for": "", "init_from": "", "size": 0, "timm_model": "",
                                 "timm_kwargs": {}, "sample_rate": 8000, "seconds": 1.0, "n_fft": 256,
                                 "hop_length": 128, "n_mels": 48, "channels": 32}}}}
    model = resolve_config(saved).to_dict()["model"]
    assert model["image"] == {"name": "timm", "image_size": 64, "pretrained_path": None, "timm_model": "resnet18",
                              "timm_kwargs": {"output_stride": 8}, "feature_pool": 2}
    assert model["text"]["depth"] == 1 and "bidirectional" not in model["text"]
    assert model["modalities"]["depth"] == {"encoder": "", "stands_for": "", "init_from": "", "size": 0,
                                            "timm_model": "", "timm_kwargs": {}}
    switched = resolve_config({}, ["model.image.name=open_clip", "model.image.open_clip_model=ViT-B-16"])
    assert selected(switched.model.image, "model.image")[1].open_clip_model == "ViT-B-16"


def test_balancer_weights_survive_a_task_subset_but_not_a_typo(caplog: pytest.LogCaptureFixture) -> None:
    tuned = ["balancer.name=fixed", "balancer.weights.recognition=0.1", "balancer.weights.captioning=2"]
    subset = load_config(None, [*tuned, "tasks=[captioning,summarization]"])  # recognition's weight: unused
    assert selected(subset.balancer, "balancer")[1].weights == {"recognition": 0.1, "captioning": 2.0}
    with pytest.raises(ConfigError, match="recogniton"):
        load_config(None, ["balancer.name=fixed", "balancer.weights.recogniton=0.1"])
    caplog.clear()
    load_config(None, [*tuned, "balancer.name=pcgrad"])
    assert "balancer.weights is ignored by balancer 'pcgrad'" in caplog.text
