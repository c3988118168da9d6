"""``mmtl baselines``: one single-task model per task with the multi-task run's budget, and their metrics."""
from __future__ import annotations

import argparse

from mmtl.cli.common import Subcommands, load_experiment


def register(sub: Subcommands) -> None:
    """Add ``mmtl baselines``."""
    bl = sub.add_parser("baselines", help="train one single-task model per task with the same budget; store their metrics",
                        epilog="overrides: dotted keys as for `mmtl train`; writes OUT/baselines.json and OUT/<task>/")
    bl.add_argument("--config", help="experiment YAML of the multi-task run (default: the built-in quickstart experiment)")
    bl.add_argument("--out", help="output directory (default: <output_dir>-baselines)")
    bl.add_argument("--resume", action="store_true",
                    help="continue in --out: skip the tasks already done, continue an interrupted task's training")
    bl.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    bl.set_defaults(func=_cmd_baselines)


def _cmd_baselines(args: argparse.Namespace) -> int:
    config = load_experiment(args.config, args.overrides)  # its sizes checked before torch is imported
    from mmtl.api import baselines

    result = baselines(config, args.out, resume=args.resume)
    path, record = result.path, result.record
    for task, entry in record["tasks"].items():
        metric = entry["primary_metric"]
        sources = ", ".join(f"{source} {values[metric]:.3f}" for source, values in entry.get("source_metrics", {}).items())
        print(f"{task}: {metric} {entry['metrics'][metric]:.3f} (single-task model in {entry['run']}; "
              f"per source: {sources})")
    print(f"wrote {path}")
    return 0
