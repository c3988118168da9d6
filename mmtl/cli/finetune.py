"""``mmtl finetune``: add a modality and/or tasks to a trained model and train what is new."""
from __future__ import annotations

import argparse

from mmtl.cli.common import Subcommands, add_field_flag, load_experiment
from mmtl.config import FinetuneConfig


def register(sub: Subcommands) -> None:
    """Add ``mmtl finetune``."""
    ft = sub.add_parser("finetune", help="fine-tune a trained model for a new modality and/or a new task",
                        description="Add a modality encoder and/or task heads to a trained model, train them on the "
                                    "config's data, check the old tasks for regressions, and save only what is new.",
                        epilog="overrides: dotted keys, e.g. train.steps=200 finetune.align_weight=1.0 "
                               "model.modalities.audio.n_mels=64")
    ft.add_argument("--checkpoint", required=True, help="the trained run or checkpoint directory to start from")
    ft.add_argument("--config", help="experiment YAML: data, training, output_dir and the finetune section")
    ft.add_argument("--add-modality", action="append", metavar="NAME", help="a modality to add (e.g. depth, audio)")
    ft.add_argument("--add-task", action="append", metavar="NAME", help="a task head to add (e.g. counting)")
    add_field_flag(ft, "--strategy", FinetuneConfig, "strategy", keep_default=False,
                   help_suffix=f" (default: the config's, {FinetuneConfig.strategy})")
    add_field_flag(ft, "--align-weight", FinetuneConfig, "align_weight", keep_default=False)
    ft.add_argument("--resume", help="continue an interrupted fine-tuning: 'latest' or a checkpoint directory "
                                     "(pass --config OUTPUT_DIR/finetune.yaml, as the interrupted run says)")
    ft.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    ft.set_defaults(func=_cmd_finetune)


def _listed(values: list[str] | None) -> list[str]:
    """Repeated and comma-separated flag values as one list."""
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def _cmd_finetune(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.add_modality:
        overrides.append(f"finetune.add_modalities=[{','.join(_listed(args.add_modality))}]")
    if args.add_task:
        overrides.append(f"finetune.add_tasks=[{','.join(_listed(args.add_task))}]")
    if args.strategy:
        overrides.append(f"finetune.strategy={args.strategy}")
    if args.align_weight is not None:
        overrides.append(f"finetune.align_weight={args.align_weight}")
    config = load_experiment(args.config, overrides, training=None)  # the model comes from the checkpoint
    from mmtl.api import finetune
    from mmtl.finetuning import format_regression

    result = finetune(args.checkpoint, config, resume=args.resume)
    losses = ", ".join(f"{k}={v:.3f}" for k, v in result.final_losses.items())
    print(f"fine-tuned {config.train.steps} steps in {result.seconds:.0f}s ({result.trained_parameters:,} trained "
          f"parameters; {losses})")
    if result.regression:
        print(f"old tasks on their own {config.finetune.regression_split} data, before and after:")
        print(format_regression(result.regression))
    print(f"fine-tuned model: {result.directory} (new tensors only; loads with the base checkpoint)")
    return 0
