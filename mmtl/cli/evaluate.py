"""``mmtl eval``: evaluate a checkpoint on a held-out split, optionally against single-task baselines (Δm).

The model comes from the checkpoint; the data from the command line (``--data``) or the user's own
config (``--config``): a checkpoint is data, so its recorded data sources are never opened.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from mmtl.cli.common import Subcommands, add_field_flag, check_output_file, load_experiment
from mmtl.config import EvalConfig, ValidationConfig
from mmtl.errors import MMTLError


def register(sub: Subcommands) -> None:
    """Add ``mmtl eval``."""
    ev = sub.add_parser("eval", help="evaluate a checkpoint on a held-out split, next to trivial baselines")
    ev.add_argument("--checkpoint", required=True, help="run or checkpoint directory")
    ev.add_argument("--data", help="shard directory, .tar file or brace pattern to evaluate on")
    ev.add_argument("--config", help="your experiment YAML: its data section says what to evaluate on (without "
                                     "--data: the held-out split of each of its sources, for the tasks it feeds); "
                                     "a checkpoint's own data settings are never used")
    add_field_flag(ev, "--split", EvalConfig, "split", show_default=True)
    add_field_flag(ev, "--max-samples", EvalConfig, "max_samples", keep_default=False)
    ev.add_argument("--examples", type=int, default=0, metavar="N",
                    help="also print N examples: each task's output beside its reference")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--output", help="write the metrics as JSON to this file")
    ev.add_argument("--baselines", help="baselines.json from `mmtl baselines`: also report Δm and per-task verdicts")
    add_field_flag(ev, "--tolerance", ValidationConfig, "tolerance", show_default=True)
    ev.add_argument("--card", action="store_true",
                    help="also record these metrics in the run's model card (RUN/README.md); off by default, "
                         "so evaluating a checkpoint never writes into its folder")
    ev.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="data settings of your own, e.g. data.map=[captions=txt] data.allow_pipe=true")
    ev.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    check_output_file(args.output, "--output")  # before the evaluation, not after it
    if args.baselines:  # a bad file fails first, before anything else is read
        from mmtl.evaluation.baselines import read_baselines

        read_baselines(args.baselines)
    if not args.data and not args.config:
        raise MMTLError("mmtl eval needs the data to evaluate on: --data SHARDS, or --config YOUR_EXPERIMENT.yaml "
                        "(e.g. the config.yaml of a run you trained yourself); a checkpoint's own data settings are "
                        "never used (README, Security model)")
    own = load_experiment(args.config, args.overrides, training=None)  # checked before the model is loaded
    from mmtl.api import evaluate
    from mmtl.evaluation.evaluate import format_examples, format_table

    report = evaluate(args.checkpoint, data=args.data, config=own, split=args.split, max_samples=args.max_samples,
                      examples=args.examples, device=args.device, baselines=args.baselines, tolerance=args.tolerance,
                      update_card=args.card)
    result = report.result
    sources = ", ".join(f"{path} ({part['samples']})" for path, part in result.sources.items())
    print(f"{result.samples} samples of split {result.split!r} from {sources}")
    print(format_table(result))
    if args.examples > 0:
        print(format_examples(result))
    if report.comparison is not None:
        _print_delta(report.comparison, multi_source=len(result.sources) > 1)
    if args.output:
        Path(args.output).write_text(json.dumps(report.to_dict(), indent=2))
        print(f"wrote {args.output}")
    return 0


def _print_delta(report: dict, multi_source: bool) -> None:
    """Print Δm with its per-task verdicts (overall, then per source) and the savings."""
    from mmtl.evaluation.delta import DeltaReport, format_delta, format_verdicts
    from mmtl.evaluation.savings import format_savings

    print()
    print("against the single-task models" + (" (all sources pooled):" if multi_source else ":"))
    print(format_delta(DeltaReport.from_dict(report)))
    for source, part in report["sources"].items():
        per_source = DeltaReport.from_dict(part)
        shown = "n/a (every baseline value is 0)" if per_source.delta_m is None else f"{100 * per_source.delta_m:+.2f}%"
        print(f"\nsource {source}: Δm = {shown}")
        print("\n".join(format_verdicts(per_source)))
    if "savings_note" in report:
        print(report["savings_note"])
    if "parameters" in report:
        print(format_savings("parameters", report["parameters"]))
    if "flops" in report:
        print(format_savings("forward FLOPs per sample", report["flops"], unit="FLOP"))
    if "vocabulary_note" in report:
        print(report["vocabulary_note"])
