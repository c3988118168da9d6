"""Ablations of mmtl's single-task recipe next to the plain reference, on one or more shard sets.

Usage: python tools/ablate_recipe.py --data DIR [--data DIR ...] [--task recognition] [--steps 300]
           [--seeds 0,1,2] [--preset tiny] [--batch-size 32] [--no-reference]
           [--variant NAME:KEY=VALUE[,KEY=VALUE ...] ...] [--json OUT]

For every data set and seed the plain reference (tools/recipe_reference.py: same backbone, average
pool + linear) is trained once, then mmtl once per variant: ``base`` (the preset's recipe as it is)
and each ``--variant``, whose overrides are mmtl config keys (``model.fusion.depth=0``, ...). Only
equal steps are compared (tools/bench_recipe.py also compares equal wall time). Each run's line
holds the primary metric, the trivial baseline, mmtl's first and last logged training loss and
seconds; the table at the end gives mean ± std over seeds and the ratio to the reference's mean.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_recipe import DataSet, ReferenceBench, base_config, run_mmtl  # noqa: E402
from mmtl.training.logging import read_log  # noqa: E402


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``NAME:KEY=VALUE,KEY=VALUE`` -> (NAME, overrides); a value holding commas goes in brackets."""
    name, _, rest = text.partition(":")
    overrides, depth, current = [], 0, ""
    for char in rest:
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            overrides.append(current)
            current = ""
        else:
            current += char
    if current:
        overrides.append(current)
    if not name or any("=" not in o for o in overrides):
        raise SystemExit(f"--variant {text!r}: expected NAME:KEY=VALUE[,KEY=VALUE ...]")
    return name, overrides


def logged_losses(run_dir: Path, task: str) -> tuple[float | None, float | None]:
    """The first and last logged training loss of ``task`` in ``run_dir/log.jsonl``."""
    points = [r[f"loss/{task}"] for r in read_log(run_dir / "log.jsonl") if f"loss/{task}" in r]
    return (points[0], points[-1]) if points else (None, None)


def run_variant(data: DataSet, args: argparse.Namespace, seed: int, overrides: list[str], out: Path) -> dict[str, Any]:
    """mmtl trained on ``data`` with ``overrides``: metric, baseline, seconds, first and last loss."""
    options = argparse.Namespace(preset=args.preset, batch_size=args.batch_size, max_eval=0, set=overrides)
    config = base_config(data, args.task, options, seed, args.steps, out)
    result = run_mmtl(config, 0)
    first, last = logged_losses(out, args.task)
    return {"metric": result["metric"], "baseline": result["baseline"], "seconds": result["seconds"],
            "first_loss": first, "last_loss": last}


def mean_std(values: list[float]) -> str:
    """``mean±std`` of ``values`` (std 0 for one value)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f}±{std:.3f}"


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per data set and variant: mean ± std over seeds and the ratio to the reference."""
    lines = []
    for key in dict.fromkeys((r["data"], r["variant"]) for r in rows):
        mine = [r for r in rows if (r["data"], r["variant"]) == key]
        refs = [r["reference"] for r in mine if r.get("reference") is not None]
        metric = statistics.fmean(r["metric"] for r in mine)
        ratio = f"{metric / statistics.fmean(refs):.3f}" if refs and statistics.fmean(refs) else "-"
        lines.append(f"{key[0]:<12} {key[1]:<24} mmtl {mean_std([r['metric'] for r in mine])}  reference "
                     f"{mean_std(refs) if refs else '-'}  ratio {ratio}  baseline {mine[0]['baseline']:.3f}  "
                     f"seeds {[r['seed'] for r in mine]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run every data set, seed and variant; print each run, the summary table and a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", required=True, help="a shard directory (repeatable)")
    parser.add_argument("--task", default="recognition")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE[,KEY=VALUE ...] (repeatable)")
    parser.add_argument("--no-base", action="store_true", help="leave out the unchanged recipe")
    parser.add_argument("--no-reference", action="store_true", help="train mmtl only")
    parser.add_argument("--json", help="also write every run's row to this file")
    args = parser.parse_args(argv)
    variants = ([] if args.no_base else [("base", [])]) + [parse_variant(v) for v in args.variant]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ablate-recipe-") as work:
        for path in map(Path, args.data):
            data = DataSet(path.name, path, [args.task])
            probe = argparse.Namespace(preset=args.preset, batch_size=args.batch_size, max_eval=0, set=[])
            config = base_config(data, args.task, probe, 0, args.steps, Path(work) / "probe")
            reference = None if args.no_reference else ReferenceBench(data, config, 0)
            for seed in [int(s) for s in args.seeds.split(",")]:
                ref = None
                if reference is not None:
                    seeded = base_config(data, args.task, probe, seed, args.steps, Path(work) / "probe")
                    ref = reference.run(seeded, args.steps, seed)["metric"]
                for name, overrides in variants:
                    out = Path(work) / f"{path.name}-{name}-{seed}"
                    row = {"data": path.name, "variant": name, "overrides": overrides, "seed": seed,
                           "reference": ref, **run_variant(data, args, seed, overrides, out)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print("\n".join(summary_lines(rows)))
    if args.json:
        Path(args.json).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
