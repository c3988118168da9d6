"""``mmtl train``: train a model from an experiment config."""
from __future__ import annotations

import argparse
import json

from mmtl.cli.common import Subcommands, check_output_dir, command_line, load_experiment


def register(sub: Subcommands) -> None:
    """Add ``mmtl train``."""
    train = sub.add_parser("train", help="train a model", epilog="overrides: dotted keys, e.g. train.steps=200 model.preset=tiny")
    train.add_argument("--config", help="experiment YAML (default: the built-in quickstart experiment)")
    train.add_argument("--resume", help="'latest' or a checkpoint directory to continue from")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    train.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    config = load_experiment(args.config, args.overrides)  # its sizes checked before torch is imported
    from mmtl.api import train

    check_output_dir(config.output_dir, "output_dir")
    result = train(config, resume=args.resume, command=command_line())
    losses = ", ".join(f"{k}={v:.3f}" for k, v in result.final_losses.items())
    print(f"trained {config.train.steps} steps in {result.seconds:.0f}s ({losses})")
    print(f"checkpoint: {result.checkpoint}")
    print(f"model card: {result.card}")
    summary = result.run_dir / "validation.json"
    if config.train.eval_every and summary.is_file():
        record = json.loads(summary.read_text())
        if record["stop_reason"]:
            print(record["stop_reason"])
        print(f"best checkpoint (validation.select={record['select']}): {record['best_checkpoint']} "
              f"(step {record['best_step']})")
    if summary.is_file() and "protection" in (record := json.loads(summary.read_text())):
        from mmtl.training.protection import format_verdicts

        print(f"\nno task left behind (validation.protect), last validation against {record['protection']['against']}:")
        print(format_verdicts(record["protection"]["tasks"], record["protection"]["against"]))
    return 0
