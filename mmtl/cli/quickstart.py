"""``mmtl quickstart``: synthesize data, train the tiny model on all tasks, evaluate, predict."""
from __future__ import annotations

import argparse

from mmtl.cli.common import Subcommands


def register(sub: Subcommands) -> None:
    """Add ``mmtl quickstart``."""
    qs = sub.add_parser("quickstart", help="synthesize data, train the tiny model on all tasks, evaluate, predict")
    qs.add_argument("--compare", action="store_true",
                    help="also train one single-task model per task with the same budget and print the "
                         "multi-task model against them, task by task (about 2.5x the time)")
    qs.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=100")
    qs.set_defaults(func=_cmd_quickstart)


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from mmtl.quickstart import run_quickstart

    return run_quickstart(args.overrides, compare=args.compare)
