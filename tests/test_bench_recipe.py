"""tools/bench_recipe.py: mmtl next to the plain PyTorch reference on tiny shards, a few steps."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.conftest import load_tool


def test_bench_recipe_reports_ratios_and_the_reference_learns(micro_data: Path, one_thread, capsys) -> None:
    bench = load_tool("bench_recipe")
    code = bench.main(["--data", str(micro_data), "--preset", "micro", "--steps", "16", "--seeds", "0",
                       "--batch-size", "8", "--max-eval", "16"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    name = micro_data.name
    tasks = ("recognition", "captioning", "summarization")
    assert set(summary["ratios"]) == {f"{name}/{t}" for t in tasks}
    for task in tasks:
        result = summary["results"][f"{name}/{task}"]
        for ratio in summary["ratios"][f"{name}/{task}"].values():
            assert ratio is None or ratio >= 0
        # the reference's training loss fell: its loop, targets and loss are wired up right
        assert result["reference_last_loss"][0] < 0.9 * result["reference_first_loss"][0], task
        # equal wall time: one side trained all 16 steps, the other at most that many
        steps = sorted([result["mmtl_time_steps"][0], result["reference_time_steps"][0]])
        assert steps[1] == 16 and 1 <= steps[0] <= 16
        assert result["metric"] in ("f1_micro", "bleu4", "rougeL")
        # generated text: how degenerate it is, on both sides (percentages); recognition generates none
        quality = [f"{side}_{key}" for side in ("mmtl", "reference") for key in ("distinct2", "repetition")]
        if task == "recognition":
            assert not set(quality) & set(result)
        else:
            assert all(0 <= result[key][0] <= 100 for key in quality), result
    assert "ratio@time" in "\n".join(out)


def test_bench_recipe_refuses_a_directory_without_shards(tmp_path: Path, capsys) -> None:
    assert load_tool("bench_recipe").main(["--data", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("mmtl: error: ")


def test_bench_recipe_passes_set_overrides_to_the_mmtl_side(micro_data: Path, capsys) -> None:
    """--set reaches mmtl's config: an invalid value is the config's one-line error, exit 2."""
    bench = load_tool("bench_recipe")
    code = bench.main(["--data", str(micro_data), "--preset", "micro", "--steps", "1", "--seeds", "0",
                       "--tasks", "summarization", "--set", "task_settings.summarization.mode=nonsense"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("mmtl: error: ") and "nonsense" in err and len(err.strip().splitlines()) == 1


def test_bench_recipe_refuses_a_bad_path_a_missing_split_and_a_task_the_data_lacks(micro_data: Path, tmp_path: Path,
                                                                                  capsys) -> None:
    bench = load_tool("bench_recipe")
    recognition_only = tmp_path / "recognition_only"
    recognition_only.mkdir()
    info = json.loads((micro_data / "dataset.json").read_text())
    info["splits"]["train"]["tasks"] = {"recognition": info["splits"]["train"]["samples"]}
    (recognition_only / "dataset.json").write_text(json.dumps(info))
    cases = {
        "no such directory": ["--data", str(tmp_path / "absent")],
        "no split 'holdout'": ["--data", str(micro_data), "--eval-split", "holdout"],
        "supervises recognition": ["--data", str(recognition_only), "--tasks", "recognition,captioning"],
    }
    for expected, argv in cases.items():
        assert bench.main([*argv, "--steps", "1", "--seeds", "0"]) == 2, expected
        err = capsys.readouterr().err
        assert err.startswith("mmtl: error: ") and expected in err and len(err.strip().splitlines()) == 1, err


def test_bench_recipe_profile_parts_tile_the_measured_step(micro_data: Path, one_thread, capsys) -> None:
    bench = load_tool("bench_recipe")
    code = bench.main(["--data", str(micro_data), "--preset", "micro", "--tasks", "recognition", "--seeds", "0",
                       "--batch-size", "8", "--profile-only", "--profile-steps", "6"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    profile = json.loads(out[-1])["profile"][f"{micro_data.name}/recognition"]
    mmtl, reference = profile["mmtl"], profile["reference"]
    expected = {"data", "to_device", "prepare", "encode:image", "glue", "fuse", "head", "loss", "backward",
                "clip_check", "optimizer", "schedule", "bookkeeping"}
    assert expected <= set(mmtl["parts_ms"]), mmtl["parts_ms"]
    assert {"data", "to_device", "forward", "loss", "backward", "optimizer"} <= set(reference["parts_ms"])
    assert all(value >= 0 for value in [*mmtl["parts_ms"].values(), *reference["parts_ms"].values()])
    # the parts tile the step: over all steps they add up to the trainer's own step time (no gap, no overlap)
    assert abs(mmtl["all_steps_ms"] - mmtl["measured_step_ms"]) <= 0.1 * mmtl["measured_step_ms"], mmtl
    assert mmtl["steps"] == 5 and mmtl["first_steps"] == 1
    assert profile["step_ratio"] == round(mmtl["step_ms"] / reference["step_ms"], 4)
    assert reference["shard_read_ms"] > 0
    # the steps alternate: neither side's clock counts the other's step (as its bookkeeping)
    assert reference["parts_ms"]["bookkeeping"] < 0.5 * reference["step_ms"], reference
    assert mmtl["parts_ms"]["bookkeeping"] < 0.5 * mmtl["step_ms"], mmtl
    groups = profile["groups_ms"]
    assert groups["forward"]["mmtl"] == round(sum(mmtl["parts_ms"][k] for k in ("encode:image", "glue", "fuse", "head")), 3)
    assert any(line.startswith("step profile ") for line in out)


def test_ablate_recipe_trains_one_reference_per_seed_and_each_variant(micro_data: Path, one_thread, tmp_path: Path,
                                                                      capsys) -> None:
    ablate = load_tool("ablate_recipe")
    assert ablate.parse_variant("a:x=1,y=[p,q]") == ("a", ["x=1", "y=[p,q]"])
    rows_file = tmp_path / "rows.jsonl"
    code = ablate.main(["--data", str(micro_data), "--preset", "micro", "--steps", "2", "--seeds", "0",
                        "--batch-size", "4", "--variant", "pooled:task_settings.recognition.head=pooled",
                        "--json", str(rows_file)])
    assert code == 0
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["base", "pooled"]
    assert rows[0]["reference"] == rows[1]["reference"] is not None  # one reference for both variants
    assert rows[1]["overrides"] == ["task_settings.recognition.head=pooled"]
    assert all(r["first_loss"] is not None and 0 <= r["metric"] <= 1 for r in rows)
    assert "ratio" in capsys.readouterr().out


def test_bench_recipe_cnn_side_reports_cpu_seconds_and_mmtl_at_its_time(micro_data: Path, one_thread, capsys) -> None:
    bench = load_tool("bench_recipe")
    code = bench.main(["--data", str(micro_data), "--preset", "micro", "--steps", "6", "--seeds", "0",
                       "--batch-size", "8", "--tasks", "recognition,captioning", "--cnn", "--cnn-factor", "0.5"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    recognition, captioning = (summary["results"][f"{micro_data.name}/{t}"] for t in ("recognition", "captioning"))
    assert "cnn" not in captioning  # the CNN classifies images; it generates no text
    assert recognition["cnn_cpu_seconds"][0] > 0 and recognition["mmtl_cpu_seconds"][0] > 0
    assert 0 <= recognition["cnn"][0] <= 1 and 0 <= recognition["mmtl_at_cnn_time"][0] <= 1
    # half the CNN's CPU time is less than mmtl's whole run: mmtl is trained again for fewer steps
    assert 1 <= recognition["mmtl_at_cnn_time_steps"][0] < 6
    assert set(summary["ratios"][f"{micro_data.name}/recognition"]) >= {"cnn_equal_steps", "cnn_time_x_factor"}
    assert "ratio@cnn time" in "\n".join(out)


def test_two_convolution_cnn_learns_a_separable_set(micro_data: Path, one_thread) -> None:
    """Red images are one class, blue ones another: the plain loop's model, loss and scoring are wired up right."""
    load_tool("bench_recipe")
    cnn = load_tool("cnn_reference")
    from mmtl.builder import components_from_data
    from mmtl.config import load_config

    task = components_from_data(load_config(None, [f"data.path={micro_data}", "tasks=[recognition]",
                                                   "model.preset=micro"])).tasks[0]
    classes = list(task.context.classes)
    images = [torch.zeros(3, 16, 16, dtype=torch.uint8) for _ in range(32)]
    for i, image in enumerate(images):
        image[2 * (i % 2)] = 200  # channel 0 (red) for even rows, 2 (blue) for odd
    rows = cnn.Prepared(images, [[i % 2] for i in range(32)], [[classes[i % 2]] for i in range(32)])
    run = cnn.train_cnn(task, rows, rows, steps=30, batch_size=8, seed=0)
    assert run.cpu_seconds > 0 and len(run.losses) == 30
    assert run.losses[-1] < 0.2 * run.losses[0]
    assert run.metrics[task.primary_metric] > 0.95


def test_bench_recipe_equal_time_budget_comes_from_the_chosen_clock(monkeypatch) -> None:
    """Wall and CPU seconds disagree (a loaded machine): ``--clock`` decides which side is retrained, and
    for how many steps, from that clock's readings on both sides (the reference's decoding a one-off cost)."""
    from types import SimpleNamespace

    bench = load_tool("bench_recipe")
    # 100 steps: mmtl 10 wall s / 4 cpu s; the reference 1 s of decoding + 4 s of loop (wall), 2 + 6 (cpu)
    monkeypatch.setattr(bench, "base_config", lambda data, task, args, seed, steps, out:
                        SimpleNamespace(tasks=[task], seed=seed, steps=steps))
    monkeypatch.setattr(bench, "run_mmtl", lambda config, max_eval: {
        "metric": config.steps / 1000, "clock": {"wall": 10 * config.steps / 100, "cpu": 4 * config.steps / 100}})

    class Reference:
        load = {"wall": 1.0, "cpu": 2.0}

        def run(self, config: object, steps: int, seed: int) -> dict:
            return {"metric": steps / 100, "clock": {"wall": 1 + 4 * steps / 100, "cpu": 2 + 6 * steps / 100}}

    def equal_time(clock: str) -> dict:
        args = SimpleNamespace(steps=100, clock=clock, max_eval=0)
        config = SimpleNamespace(tasks=["recognition"], seed=0, steps=100)
        mmtl, ref = bench.run_mmtl(config, 0), Reference().run(config, 100, 0)
        return bench.equal_time(config, SimpleNamespace(name="d"), args, Reference(), Path("runs"), mmtl, ref)

    wall, cpu = equal_time("wall"), equal_time("cpu")
    # wall: the reference is faster (5 s against 10): mmtl gets 50 steps, 5 s
    assert (wall["mmtl_time_steps"], wall["reference_time_steps"]) == (50, 100)
    assert wall["mmtl_time_seconds"] == wall["reference_time_seconds"] == 5.0
    # cpu: mmtl is faster (4 s against 8): the reference gets (4 - 2) / (6 / 100) = 33 steps after its decoding
    assert (cpu["mmtl_time_steps"], cpu["reference_time_steps"]) == (100, 33)
    assert cpu["mmtl_time_seconds"] == 4.0 and cpu["reference_time_seconds"] <= 4.0
    assert (cpu["mmtl_time"], cpu["reference_time"]) == (0.1, 0.33)


def test_bench_recipe_cpu_clock_times_both_sides_in_cpu_seconds(micro_data: Path, one_thread, capsys) -> None:
    bench = load_tool("bench_recipe")
    assert bench.parse_args([]).clock == "wall"
    code = bench.main(["--data", str(micro_data), "--preset", "micro", "--steps", "4", "--seeds", "0",
                       "--batch-size", "4", "--max-eval", "8", "--tasks", "recognition", "--clock", "cpu"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    result = summary["results"][f"{micro_data.name}/recognition"]
    assert summary["clock"] == "cpu" and "mmtl cpu s" in out[-3]
    assert result["mmtl_step_cpu_seconds"][0] > 0 and result["reference_step_cpu_seconds"][0] > 0
    # the side trained again got at most the other side's CPU seconds (its rate measured, so allow 50%)
    times = result["mmtl_time_seconds"][0], result["reference_time_seconds"][0]
    assert min(times) > 0 and max(times) <= 1.5 * min(times) + 0.5
    assert bench.main(["--data", str(micro_data), "--preset", "micro", "--steps", "1", "--seeds", "0",
                       "--tasks", "recognition", "--clock", "cpu", "--set", "data.num_workers=1"]) == 2
    assert "--clock cpu" in capsys.readouterr().err
