"""``mmtl quickstart --compare``: the multi-task model against single-task models trained with the same budget."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from mmtl.cli import main
from tests.conftest import micro_overrides


def test_quickstart_compare_trains_single_task_models_and_prints_the_verdicts(micro_data: Path, tmp_path: Path,
                                                                                capsys, one_thread) -> None:
    run = tmp_path / "qs"
    assert main(["quickstart", "--compare", *micro_overrides(micro_data, run, steps=2)]) == 0
    out = capsys.readouterr().out
    assert "against its single-task models" in out and "Δm = " in out
    verdict_rows = out.split("single-task  change  verdict")[1].splitlines()[2:5]
    assert [row.split()[0] for row in verdict_rows] == ["recognition", "captioning", "summarization"]
    report = json.loads((run / "metrics.json").read_text())["single_task"]
    assert set(report["verdicts"]) == {"recognition", "captioning", "summarization"}
    assert report["parameters"]["ratio"] > 1  # one model instead of three
    for task in ("recognition", "captioning", "summarization"):  # the same budget, each on its own
        log = (Path(f"{run}-baselines") / task / "log.jsonl").read_text().splitlines()
        assert json.loads(log[-1])["step"] == 2
    # the quickstart's own settings reach the run it trains (one shared text decoder, the tuned weights)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["decoder"]["shared"] is True
    assert saved["balancer"]["weights"]["recognition"] == 0.1


def test_a_bad_quickstart_override_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["quickstart", "model.decoder.shared=maybe", f"output_dir={tmp_path / 'qs'}"]) == 2
    err = capsys.readouterr().err
    assert "model.decoder.shared" in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "qs").exists()  # refused before anything was written
