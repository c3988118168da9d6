"""Fine-tuning benchmark: a trained RGB model learns depth maps, sound and a counting head (mmtl.finetuning).

Measures, on the synthetic shapes world:
- the RGB model's recognition / captioning on the test scenes (the reference);
- after fine-tuning on depth: recognition and captioning from depth maps alone, vs the RGB scores and the
  trivial baselines;
- after fine-tuning on sound: recognition from audio alone vs the trivial (majority) baseline;
- after adding a counting head: its accuracy vs the majority count;
- the old tasks on their own validation data before and after each fine-tuning (non-regression).

Data (same seed, so the three directories hold the same test scenes):
    mmtl data synth --out D/ft --seed 1 --modalities image,depth,audio --count
    mmtl data synth --out D/depth --seed 1 --num 200 --val 0 --modalities depth --count
    mmtl data synth --out D/audio --seed 1 --num 200 --val 0 --modalities audio --count
Run:
    python tools/bench_finetune.py --base RUN --data D/ft --depth-only D/depth --audio-only D/audio --out OUT
Prints a table and, last, one JSON line (``depth_vs_rgb_recognition`` is the ratio to the RGB model).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import mmtl.components  # noqa: F401  (registers the components that configs name)
from mmtl.config import load_config
from mmtl.evaluation.evaluate import evaluate
from mmtl.finetuning import run_finetune
from mmtl.inference import Predictor

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "experiment"


def scores(run: Path, data: Path, samples: int) -> dict[str, tuple[float, float]]:
    """task -> (primary metric of the model, of the trivial baseline) on ``data``'s test split."""
    predictor = Predictor.from_pretrained(run)
    config = predictor.config
    config.eval.max_samples = samples
    result = evaluate(predictor.components, config, predictor.device, data_path=str(data), split="test")
    out = {task: (result.metrics[task][metric], result.baselines[task][metric]) for task, metric in result.primary.items()}
    print(f"  {run.name} on {data.name}: " + ", ".join(f"{t} {m:.3f} (baseline {b:.3f})" for t, (m, b) in out.items()),
          flush=True)
    return out


def finetune(name: str, base: Path, config_file: Path, overrides: list[str],
             reuse: bool = False) -> tuple[Path, float, float]:
    """Run one fine-tuning; returns its directory, seconds, and the largest |change| of an old task's metric
    (``reuse``: take an earlier run's result from its directory instead)."""
    config = load_config(config_file, overrides)
    directory = Path(config.output_dir)
    if reuse and (directory / "regression.json").is_file():
        rows = json.loads((directory / "regression.json").read_text())["rows"]
        return directory, float("nan"), max((abs(r["change"]) for r in rows), default=float("nan"))
    started = time.perf_counter()
    result = run_finetune(base, config)
    worst = max((abs(r.change) for r in result.regression), default=float("nan"))
    print(f"[{name}] {time.perf_counter() - started:.0f}s, {result.trained_parameters:,} trained parameters, "
          f"largest old-task metric change {worst:.4f}", flush=True)
    return result.directory, time.perf_counter() - started, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="trained run (image + text)")
    parser.add_argument("--data", required=True, help="shards with image, depth, audio and count")
    parser.add_argument("--depth-only", required=True, help="the same test scenes with depth maps only")
    parser.add_argument("--audio-only", required=True, help="the same test scenes with sounds only")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--samples", type=int, default=200, help="test samples per evaluation")
    parser.add_argument("--regression-samples", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--depth-strategy", choices=["frozen", "lora", "full"], default="lora")
    parser.add_argument("--audio-strategy", choices=["frozen", "lora", "full"], default="lora")
    parser.add_argument("--reuse", action="store_true", help="evaluate fine-tunings already in --out instead of rerunning")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base, out = Path(args.base), Path(args.out)
    common = [f"data.path={args.data}", f"train.steps={args.steps}", "train.progress=false", "train.overwrite=true",
              f"finetune.regression_samples={args.regression_samples}", "train.warmup_steps=15"]
    rgb = scores(base, Path(args.data), args.samples)
    depth_dir, depth_s, depth_worst = finetune(
        f"depth, {args.depth_strategy}", base, CONFIGS / "finetune_depth.yaml",
        common + [f"output_dir={out / f'depth_{args.depth_strategy}'}", f"finetune.strategy={args.depth_strategy}"],
        args.reuse)
    depth = scores(depth_dir, Path(args.depth_only), args.samples)
    audio_dir, audio_s, audio_worst = finetune(
        f"audio, {args.audio_strategy}", base, CONFIGS / "finetune_audio.yaml",
        common + [f"output_dir={out / f'audio_{args.audio_strategy}'}", f"finetune.strategy={args.audio_strategy}"],
        args.reuse)
    audio = scores(audio_dir, Path(args.audio_only), args.samples)
    count_dir, count_s, count_worst = finetune(
        "counting, frozen", base, CONFIGS / "finetune_depth.yaml",
        common + [f"output_dir={out / 'counting'}", "finetune.add_modalities=[]", "finetune.add_tasks=[counting]",
                  "finetune.align_weight=0", f"train.steps={max(args.steps // 2, 1)}"], args.reuse)
    counting = scores(count_dir, Path(args.data), args.samples)["counting"]
    rows = [("RGB model, image", "recognition f1_micro", *rgb["recognition"]),
            ("RGB model, image", "captioning bleu4", *rgb["captioning"]),
            (f"+depth ({args.depth_strategy}), depth only", "recognition f1_micro", *depth["recognition"]),
            (f"+depth ({args.depth_strategy}), depth only", "captioning bleu4", *depth["captioning"]),
            (f"+audio ({args.audio_strategy}), audio only", "recognition f1_micro", *audio["recognition"]),
            (f"+audio ({args.audio_strategy}), audio only", "captioning bleu4", *audio["captioning"]),
            ("+counting head (frozen), image", "counting accuracy", *counting)]
    print(f"{'model, input':<32} {'metric':<22} {'model':>8} {'baseline':>9}")
    for name, metric, model, baseline in rows:
        print(f"{name:<32} {metric:<22} {model:8.3f} {baseline:9.3f}")
    print(json.dumps({
        "depth_vs_rgb_recognition": depth["recognition"][0] / max(rgb["recognition"][0], 1e-9),
        "depth_recognition": depth["recognition"][0], "rgb_recognition": rgb["recognition"][0],
        "depth_captioning_bleu4": depth["captioning"][0], "captioning_baseline_bleu4": depth["captioning"][1],
        "audio_recognition": audio["recognition"][0], "audio_recognition_baseline": audio["recognition"][1],
        "counting_accuracy": counting[0], "counting_baseline": counting[1],
        "old_task_max_change": {"depth": depth_worst, "audio": audio_worst, "counting_frozen": count_worst},
        "strategies": {"depth": args.depth_strategy, "audio": args.audio_strategy},
        "seconds": {"depth": depth_s, "audio": audio_s, "counting": count_s},  # NaN: reused with --reuse
        "steps": args.steps,
    }))


if __name__ == "__main__":
    main()
