"""Benchmark: how generated text reads on real documents (issue #28), one trained model, several decodings.

    python tools/bench_text.py --run runs/tldr --data data/tldr [--split test] [--max-samples 0] \
        [--train "tasks=[summarization]" "model.preset=tiny" "train.steps=300"] \
        [--decoding NAME:key=value,key=value ...]

Trains ``--run`` first when it holds no checkpoint and ``--train`` gives the overrides (``mmtl train``
with ``data.path=--data`` and ``output_dir=--run``), then evaluates the checkpoint on ``--split`` once per
decoding: ``NAME`` and ``eval.generation`` overrides (``greedy:whole_words=false``; ``NAME:`` alone is
the checkpoint's own decoding). Per decoding and generation task it prints the primary metric, ROUGE-L,
repetition (share of words repeating an earlier word of the same output), the outputs holding a word
fragment (mmtl.text.copied_fragments) and the share of the most common 4-word opening; the trivial
baseline (lead sentence, most frequent caption) comes first. Ends with one JSON line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

# the decodings of issue #28's ablation: greedy as before it, then one knob at a time, then the checkpoint's own
DEFAULT_DECODINGS = (
    "before:whole_words=false,no_repeat_ngram_size=0",
    "whole_words:whole_words=true,no_repeat_ngram_size=0",
    "ngram3:whole_words=true,no_repeat_ngram_size=3",
    "ngram4:whole_words=true,no_repeat_ngram_size=4",
    "ngram4_rep1.2:whole_words=true,no_repeat_ngram_size=4,repetition_penalty=1.2",
    "checkpoint:",
)
COLUMNS = ("rougeL", "repetition", "fragment_outputs", "top_opening", "distinct2")


def parse_decoding(spec: str) -> tuple[str, dict[str, str]]:
    """``NAME:key=value,key=value`` -> (NAME, {key: value}); ``NAME:`` has no overrides."""
    name, _, rest = spec.partition(":")
    pairs = [p for p in rest.split(",") if p]
    if not name or any("=" not in p for p in pairs):
        raise SystemExit(f"--decoding {spec!r}: expected NAME:key=value,key=value")
    return name, dict(p.split("=", 1) for p in pairs)


def _generation(base: Any, overrides: dict[str, str]) -> Any:
    """``base`` (a GenerationConfig) with ``overrides`` parsed as the config parser parses them."""
    from mmtl.config import GenerationConfig, build_dataclass, validate_generation
    from mmtl.config.parsing import parse_override

    values = dataclasses.asdict(base)
    for key, raw in overrides.items():
        path, value = parse_override(f"{key}={raw}")
        values[".".join(path)] = value
    generation = build_dataclass(GenerationConfig, values, "generation")
    validate_generation(generation)
    return generation


def _row(name: str, task: str, metrics: dict[str, float], samples: int, primary: str) -> dict[str, Any]:
    row = {"decoding": name, "task": task, primary: round(metrics[primary], 2)}
    row.update({key: round(metrics[key], 2) for key in COLUMNS if key in metrics})
    if "fragment_outputs" in metrics:
        row["fragment_count"] = round(metrics["fragment_outputs"] * samples / 100)
    return row


def evaluate_decodings(run: str, data: str, split: str, max_samples: int, decodings: list[str]) -> tuple[list, int]:
    """One row per decoding and generation task (the trivial baseline's first), and the samples scored."""
    from mmtl.evaluation.evaluate import EvalOptions, evaluate
    from mmtl.inference import Predictor

    predictor = Predictor.from_pretrained(run)
    tasks = [t for t in predictor.components.tasks if t.writes_text]
    rows: list[dict[str, Any]] = []
    samples = 0
    for index, spec in enumerate(decodings):
        name, overrides = parse_decoding(spec)
        config = dataclasses.replace(predictor.config, eval=dataclasses.replace(
            predictor.config.eval, generation=_generation(predictor.config.eval.generation, overrides), num_examples=0))
        start = time.perf_counter()
        result = evaluate(predictor.components, config, predictor.device, data_path=data, split=split,
                          max_samples=max_samples, options=EvalOptions(trivial_baselines=index == 0))
        seconds = time.perf_counter() - start
        samples = result.samples
        for task in [t for t in tasks if t.name in result.metrics]:
            if index == 0 and task.name in result.baselines:
                rows.append(_row("trivial baseline", task.name, result.baselines[task.name], samples, task.primary_metric))
            rows.append({**_row(name, task.name, result.metrics[task.name], samples, task.primary_metric),
                         "seconds": round(seconds, 1)})
    return rows, samples


def print_table(rows: list[dict[str, Any]]) -> None:
    """The rows as an aligned plain-text table."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    widths = {k: max(len(k), *(len(str(row.get(k, ""))) for row in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for row in rows:
        print("  ".join(str(row.get(k, "")).ljust(widths[k]) for k in keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="run directory (trained first when it has no checkpoint)")
    parser.add_argument("--data", required=True, help="shard directory with the training and held-out splits")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-samples", type=int, default=0, help="held-out samples (0: all)")
    parser.add_argument("--train", nargs="*", default=None, help="mmtl train overrides, when --run must be trained")
    parser.add_argument("--decoding", action="append", help="NAME:key=value,... (repeatable; default: the ablation)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import mmtl.components  # noqa: F401  (registers the components that configs name)

    if not (Path(args.run) / "checkpoints").is_dir():
        if args.train is None:
            raise SystemExit(f"{args.run} holds no checkpoint: pass --train OVERRIDES to train it")
        from mmtl.cli import main as mmtl_main

        if mmtl_main(["train", f"data.path={args.data}", f"output_dir={args.run}", "train.progress=false",
                      *args.train]) != 0:
            raise SystemExit("training failed")
    rows, samples = evaluate_decodings(args.run, args.data, args.split, args.max_samples,
                                       args.decoding or list(DEFAULT_DECODINGS))
    print(f"{args.run} on {args.data} split {args.split!r}: {samples} samples")
    print_table(rows)
    print(json.dumps({"bench": "text", "run": args.run, "data": args.data, "split": args.split, "samples": samples,
                      "rows": rows, "machine": f"{platform.machine()} {torch.get_num_threads()} thread(s), "
                                                f"torch {torch.__version__}"}))


if __name__ == "__main__":
    main()
