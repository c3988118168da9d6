"""``mmtl quickstart --compare``: the multi-task model against single-task models trained with the same budget."""
from __future__ import annotations

import json
from pathlib import Path

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
