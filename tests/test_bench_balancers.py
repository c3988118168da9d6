"""tools/bench_balancers.py: step-time and FLOP ratios against equal weighting, on the micro preset."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_tool


def test_bench_balancers_reports_time_and_flop_ratios(one_thread, capsys) -> None:
    code = load_tool("bench_balancers").main(["--preset", "micro", "--batch-size", "4", "--steps", "1",
                                              "--warmup", "0", "--rounds", "1",
                                              "--only", "uncertainty,pcgrad,pcgrad@params"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["ratio"]) == {"equal", "uncertainty", "pcgrad", "pcgrad@params"}
    flops = result["flop_ratio"]
    assert flops["equal"] == 1.0 and result["equal_gflop_per_step"] > 0
    assert abs(flops["uncertainty"] - 1.0) < 0.02  # loss weighting: the same single backward
    # three tasks' gradients on all shared parameters: three backward passes through the trunk
    assert flops["pcgrad@params"] > 1.3 and flops["pcgrad@params"] > flops["pcgrad"]


def test_bench_balancers_refuses_bad_arguments_in_one_line(capsys) -> None:
    bench = load_tool("bench_balancers")
    for argv in (["--steps", "0"], ["--only", "pcgrad,nonsense"]):
        with pytest.raises(SystemExit) as stop:
            bench.main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert "error:" in err and "Traceback" not in err
