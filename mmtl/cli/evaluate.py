"""``mmtl eval``: evaluate a checkpoint on a held-out split, optionally against single-task baselines (Δm).

The model comes from the checkpoint; the data from the command line (``--data``) or the user's own
config (``--config``): a checkpoint is data, so its recorded data sources are never opened.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from mmtl.cli.common import Subcommands, add_field_flag, check_output_file, load_experiment
from mmtl.config import EvalConfig, ExperimentConfig, ValidationConfig
from mmtl.errors import MMTLError

if TYPE_CHECKING:  # the CLI imports torch-heavy modules only when a command runs
    from mmtl.evaluation.evaluate import EvalResult
    from mmtl.inference import Predictor


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
    ev.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="data settings of your own, e.g. data.map=[captions=txt] data.allow_pipe=true")
    ev.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from mmtl.evaluation.evaluate import evaluate, format_examples, format_table
    from mmtl.inference import Predictor

    check_output_file(args.output, "--output")  # before the evaluation, not after it
    if args.baselines:  # read first: a bad file should fail before a long evaluation
        from mmtl.evaluation.baselines import baseline_split_metrics, read_baselines

        baselines = read_baselines(args.baselines)
        baseline_split_metrics(baselines, args.split)
    if not args.data and not args.config:
        raise MMTLError("mmtl eval needs the data to evaluate on: --data SHARDS, or --config YOUR_EXPERIMENT.yaml "
                        "(e.g. the config.yaml of a run you trained yourself); a checkpoint's own data settings are "
                        "never used (README, Security model)")
    own = load_experiment(args.config, args.overrides)  # checked before the model is loaded
    predictor = Predictor.from_pretrained(args.checkpoint, device=args.device)
    config = dataclasses.replace(predictor.config, data=own.data)
    if args.max_samples is not None:
        config.eval.max_samples = args.max_samples
    config.eval.num_examples = max(args.examples, 0)
    result = evaluate(predictor.components, config, predictor.device, data_path=args.data, split=args.split)
    sources = ", ".join(f"{path} ({part['samples']})" for path, part in result.sources.items())
    print(f"{result.samples} samples of split {result.split!r} from {sources}")
    print(format_table(result))
    if args.examples > 0:
        print(format_examples(result))
    output = result.to_dict()
    if args.baselines:
        output["delta"] = _report_delta(predictor, config, result, baselines, args.tolerance)
    if args.output:
        Path(args.output).write_text(json.dumps(output, indent=2))
        print(f"wrote {args.output}")
    return 0


def _report_delta(predictor: Predictor, config: ExperimentConfig, result: EvalResult, baselines: dict,
                  tolerance: float) -> dict:
    """Print Δm with its per-task verdicts (overall, then per source) and the savings; return the report."""
    from mmtl.evaluation.baselines import compare_with_baselines
    from mmtl.evaluation.delta import DeltaReport, MetricRoles, format_delta, format_verdicts
    from mmtl.evaluation.savings import format_savings, forward_flops_per_sample

    roles = MetricRoles.of(predictor.components.tasks)
    report = compare_with_baselines(result, baselines, tolerance, roles, predictor.model.parameter_report(),
                                    lambda tasks: forward_flops_per_sample(predictor.components, config, tasks),
                                    predictor.components.vocab.size)
    print()
    print("against the single-task models" + (" (all sources pooled):" if len(result.sources) > 1 else ":"))
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
    return report
