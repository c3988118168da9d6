"""`mmtl tune-weights`: the weight grid, the choice on validation, and the tuned config it writes."""
import json
from pathlib import Path

import pytest

from mmtl.cli import main
from mmtl.config import load_config, selected
from mmtl.tuning import best_on_validation, weight_grid
from tests.conftest import micro_overrides


def test_weight_grid_scales_to_mean_one_drops_duplicates_and_starts_equal() -> None:
    grid = weight_grid(["a", "b", "c"], [1.0, 3.0])
    assert grid[0] == {"a": 1.0, "b": 1.0, "c": 1.0}  # (1,1,1) and (3,3,3) are one candidate
    assert len(grid) == 7
    for weights in grid:
        assert sum(weights.values()) / 3 == pytest.approx(1.0, abs=1e-5)
    assert {"a": 0.6, "b": 0.6, "c": 1.8} in grid


def test_best_on_validation_prefers_no_regression_over_delta_m() -> None:
    regressed = ({"a": 3.0}, {"regressed": ["b"], "delta_m": 0.2})
    clean = ({"a": 1.0}, {"regressed": [], "delta_m": 0.01})
    undefined = ({"a": 2.0}, {"regressed": [], "delta_m": None})
    assert best_on_validation([regressed, undefined, clean])[0] == {"a": 1.0}
    assert best_on_validation([regressed, ({"a": 5.0}, {"regressed": ["a"], "delta_m": 0.3})])[0] == {"a": 5.0}


def test_tune_weights_writes_a_config_that_trains(micro_data: Path, tmp_path: Path, capsys, one_thread) -> None:
    out = tmp_path / "tuning"
    overrides = micro_overrides(micro_data, tmp_path / "run", steps=2) + ["validation.max_samples=8"]
    assert main(["tune-weights", *overrides, "--values", "1,3", "--budget", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "tuning.json").read_text())
    assert [c["weights"] for c in record["candidates"]] == weight_grid(["recognition", "captioning", "summarization"],
                                                                       [1.0, 3.0])[:2]
    assert record["weights"] in [c["weights"] for c in record["candidates"]] and "chosen:" in printed
    table = printed.splitlines()[:3]  # header and two candidates: their Δm columns end at the same place
    assert table[0].startswith("weights") and len({line.index("%") if "%" in line else line.index(")")
                                                   for line in table}) == 1
    tuned = load_config(str(out / "tuned.yaml"), [])
    assert tuned.balancer.name == "fixed" and selected(tuned.balancer, "balancer")[1].weights == record["weights"]
    assert main(["train", "--config", str(out / "tuned.yaml"), f"output_dir={tmp_path / 'tuned-run'}",
                 "train.steps=1"]) == 0
    assert main(["tune-weights", *overrides, "--values", "1,x", "--out", str(out)]) == 2
