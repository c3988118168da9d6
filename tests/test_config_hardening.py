"""Hostile configuration input: every bad value or file is a ConfigError naming it, never a traceback
(issue #17), plus property-based tests of override parsing (hypothesis)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmtl.config.parsing
from mmtl.config import ExperimentConfig, load_config, parse_override, resolve_config
from mmtl.errors import ConfigError


@pytest.mark.parametrize("override, fragment", [
    ("train.lr=.nan", "train.lr must be a finite number"),
    ("train.lr=.inf", "train.lr must be a finite number"),
    ("train.lr=-.inf", "train.lr must be a finite number"),
    ("train.lr=nan", "train.lr must be a finite number"),
    ("train.lr=1e400", "train.lr must be a finite number"),
    ("train.lr=1000", "train.lr must be in (0, 100]"),
    ("seed=1180591620717411303424", "seed must fit in 64 bits"),
    ("train.log_every=0", "train.log_every must be >= 1"),
    ("train.grad_clip=0", "train.grad_clip must be > 0"),
    ("model.dropout=1.5", "model.dropout must be in [0, 1)"),
    ("data.max_corrupt_fraction=-0.1", "data.max_corrupt_fraction must be in [0, 1]"),
    ("eval.threshold=2", "eval.threshold must be in [0, 1]"),
    ("eval.generation.temperature=1e-300", "eval.generation.temperature must be >= 0.0001"),
    ("eval.generation.num_beams=100000", "eval.generation.num_beams must be >= 1 and <= 64"),
    ("train.weight_decay=-1", "train.weight_decay must be >= 0"),
    ("train.lr=" + "[" * 5000 + "]" * 5000, "nested too deeply"),
])
def test_out_of_range_and_non_finite_values_are_refused(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config({}, [override])
    assert fragment in str(info.value)


def test_non_utf8_config_file(tmp_path: Path) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(path)


@pytest.mark.parametrize("include", ["5", "[5]", "[null]", "{a: 1}"])
def test_include_must_name_files(tmp_path: Path, include: str) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(f"include: {include}\ntrain:\n  steps: 3\n")
    with pytest.raises(ConfigError, match="include must be a file name or a list of file names"):
        load_config(path)


def test_deeply_nested_yaml(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("train: " + "[" * 20_000 + "]" * 20_000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(path)


def test_unreadable_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Permission denied (simulated: the tests run as root, which reads any file)."""
    path = tmp_path / "locked.yaml"
    path.write_text("train:\n  steps: 3\n")

    def denied(file: Path, max_bytes: int) -> bytes:
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(mmtl.config.parsing, "read_bounded", denied)
    with pytest.raises(ConfigError, match="cannot read config file .*locked.yaml: Permission denied"):
        load_config(path)


# -- property-based ---------------------------------------------------------------------------------
KEYS = ["train.lr", "train.steps", "seed", "model.dropout", "data.batch_size", "eval.threshold", "tasks",
        "train.precision", "model.preset", "eval.generation.temperature", "balancer.weights", "train.stpes",
        "model", "train", "data.sources", "include", "eval.generation.seed"]
YAML_SCALARS = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80).map(str), st.floats(allow_nan=True).map(repr),
    st.sampled_from([".nan", ".inf", "-.inf", "null", "true", "[]", "{}", "[a, b]", "'x'", "{a: 1}", "1e-3", "~",
                     "[recognition]", "tiny", "fp32", "- x", ":", "&a [*a]", "!!python/object:os.system {}"]),
    st.text(max_size=30),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS), YAML_SCALARS), max_size=4))
def test_any_override_is_a_config_or_a_config_error(pairs: list[tuple[str, str]]) -> None:
    overrides = [f"{key}={value}" for key, value in pairs]
    try:
        config = resolve_config({}, overrides)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)[:200]
        return
    assert isinstance(config, ExperimentConfig)
    for value in (config.train.lr, config.model.dropout, config.eval.threshold, config.eval.generation.temperature):
        assert math.isfinite(value)
    assert config.train.lr > 0 and 0 <= config.eval.threshold <= 1


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_override_text_parses_or_is_refused(text: str) -> None:
    try:
        path, _ = parse_override(text)
    except ConfigError:
        return
    assert path and all(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                        st.sampled_from(["train", "model", "data", "steps", "lr", "include", "eval", "x"]),
                        inner, max_size=3), max_leaves=12))
def test_any_yaml_file_is_a_config_or_a_config_error(tmp_path: Path, tree: object) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tree))
    try:
        load_config(path)
    except ConfigError:
        pass
