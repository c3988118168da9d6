"""``mmtl tune-weights``: a budgeted search over fixed task weights, chosen on the validation split."""
from __future__ import annotations

import argparse
from pathlib import Path

from mmtl.cli.common import Subcommands, load_experiment
from mmtl.errors import MMTLError


def register(sub: Subcommands) -> None:
    """Add ``mmtl tune-weights``."""
    tw = sub.add_parser(
        "tune-weights", help="tuned scalarisation: search fixed task weights on the validation split, write a config "
                             "(train it: mmtl train --config OUT/tuned.yaml)")
    tw.add_argument("--config", help="experiment YAML of the multi-task run (default: the built-in quickstart experiment)")
    tw.add_argument("--out", help="output directory (default: <output_dir>-tuning)")
    tw.add_argument("--values", default="1,3", help="weight values combined over the tasks (default 1,3)")
    tw.add_argument("--budget", type=int, default=0, help="at most this many candidate runs (default 0: the whole grid)")
    tw.add_argument("--steps", type=int, help="training steps per candidate (default: train.steps)")
    tw.add_argument("--baselines", help="baselines.json scored on data.val_split (default: trained into OUT/baselines)")
    tw.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    tw.set_defaults(func=_cmd_tune)


def _values(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MMTLError(f"--values must be comma-separated numbers, got {text!r}") from None


def _weights_text(weights: dict[str, float]) -> str:
    return ", ".join(f"{task} {weight:.3g}" for task, weight in weights.items())


def _cmd_tune(args: argparse.Namespace) -> int:
    if args.budget < 0 or (args.steps is not None and args.steps < 1):
        raise MMTLError("--budget must be 0 or more and --steps 1 or more")
    config = load_experiment(args.config, args.overrides)  # its sizes checked before torch is imported
    from mmtl.tuning import tune_weights

    out = Path(args.out) if args.out else Path(f"{config.output_dir}-tuning")
    result = tune_weights(config, out, _values(args.values), args.budget, args.steps, args.baselines)
    rows = [(_weights_text(c["weights"]), "n/a" if c["delta_m"] is None else f"{100 * c['delta_m']:+.2f}%",
             ", ".join(c["regressed"]) or "-") for c in result.candidates]
    width = max([len("weights")] + [len(row[0]) for row in rows])
    for weights, delta, regressed in [("weights", "Δm (val)", "regressed"), *rows]:
        print(f"{weights:<{width}}  {delta:>9}  {regressed}")
    chosen = _weights_text(result.weights)
    print(f"chosen: {chosen}\nwrote {result.config_path} (train it: mmtl train --config {result.config_path})")
    return 0
