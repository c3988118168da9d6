"""``mmtl model``: inspect the model a config builds."""
from __future__ import annotations

import argparse

from mmtl.cli.common import Subcommands, load_experiment


def register(sub: Subcommands) -> None:
    """Add ``mmtl model`` and its actions."""
    model = sub.add_parser("model", help="inspect models").add_subparsers(dest="model_command", required=True, metavar="ACTION")
    info = model.add_parser("info", help="parameters per part (shared vs per task) and forward FLOPs per task",
                            description="Print the parameters of each model part (shared vs per task) and the "
                                        "forward FLOPs per task of the model a config builds.",
                            epilog="classes, label mode and vocabulary come from the config's data sets when they "
                                   "exist (classes from the sources that feed recognition); the note says which")
    info.add_argument("--config", help="experiment YAML (default: the built-in quickstart experiment)")
    info.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. model.preset=small")
    info.set_defaults(func=_cmd_model_info)


def _cmd_model_info(args: argparse.Namespace) -> int:
    config = load_experiment(args.config, args.overrides)  # its sizes checked before torch is imported
    from mmtl.evaluation.info import model_info

    print(model_info(config))
    return 0
