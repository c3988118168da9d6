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


class DriftingLoad:
    """A fake clock for steps whose cost is multiplied by a machine load that climbs fivefold over the
    run and jitters by up to 20% from step to step (other processes starting, finishing, bursting)."""

    def __init__(self, steps: int) -> None:
        self.now, self.taken, self.steps = 0.0, 0, steps
        self.jitter = iter(0.8 + 0.4 * ((k * 7919) % 101) / 100 for k in range(10 * steps))

    def step(self, cost: float) -> None:
        load = (1 + 4 * self.taken / self.steps) * next(self.jitter)
        self.now += cost * load
        self.taken += 1

    def clock(self) -> float:
        return self.now


@pytest.mark.parametrize("slowdown", [1.0, 1.05, 2.0])
def test_paired_ratio_reads_the_true_slowdown_under_drifting_load(slowdown: float) -> None:
    bench = load_tool("bench_balancers")
    load = DriftingLoad(steps=2 * 15 + 1)
    ratios, baseline_seconds = bench.paired_ratios(lambda: load.step(1.0), lambda: load.step(slowdown), pairs=15,
                                                   clock=load.clock)
    assert len(ratios) == 15 and len(baseline_seconds) == 16
    median, low, high, coverage = bench.median_interval(ratios)
    # the load multiplies step times by up to 6x, yet each ratio is taken against the neighbouring
    # baseline steps, so it cancels: an unpaired design would read the drift, not the slowdown
    assert abs(median / slowdown - 1) < 0.12
    assert low <= slowdown <= high and coverage >= 0.95
    assert high / low < 1.6


def test_paired_ratio_tells_5_percent_from_noise_of_1_percent() -> None:
    bench = load_tool("bench_balancers")
    noise = iter(1 + 0.01 * ((k * 37) % 7 - 3) / 3 for k in range(100))
    now = [0.0]

    def step(cost: float) -> None:
        now[0] += cost * next(noise)

    ratios, _ = bench.paired_ratios(lambda: step(1.0), lambda: step(1.05), pairs=15, clock=lambda: now[0])
    median, low, high, _ = bench.median_interval(ratios)
    assert low > 1.02 and high < 1.08 and abs(median - 1.05) < 0.015


def test_median_interval_uses_order_statistics_with_binomial_coverage() -> None:
    bench = load_tool("bench_balancers")
    median, low, high, coverage = bench.median_interval([float(x) for x in range(1, 16)])  # 1..15
    # n = 15: the 4th and 12th smallest cover the median with probability 1 - 2 P(Bin(15, 1/2) <= 3) = 0.965
    assert (median, low, high) == (8.0, 4.0, 12.0) and abs(coverage - 0.9648) < 1e-3
    # too few samples for 95%: the full range, with the coverage it really has (1 - 2 / 2^4)
    assert bench.median_interval([3.0, 1.0, 2.0, 4.0]) == (2.5, 1.0, 4.0, 0.875)
