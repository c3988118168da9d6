"""The ``mmtl`` command: its parser (one module per command adds its own) and the one error boundary.

User errors print one line and exit with code 2, never a traceback. A command given a checkpoint has
its sizes checked from the files first (``mmtl.config.budget.preflight_checkpoint``), so a model too
large to build is refused before the libraries that would build it are loaded.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from mmtl.cli import analyze, baselines, data, evaluate, export, finetune, model, predict, quickstart, serve, train, tune
from mmtl.cli import common
from mmtl.cli.examples import add_examples
from mmtl.config import preflight_checkpoint
from mmtl.errors import TrainingInterrupted, describe_failure
from mmtl.version import __version__

# in the order `mmtl --help` lists them
COMMANDS = (data, train, evaluate, analyze, baselines, tune, predict, serve, model, finetune, export, quickstart)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="mmtl", description="Multimodal multi-task learning.")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (allowed anywhere on the command line)")
    parser.add_argument("--version", action="version", version=f"mmtl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    add_examples(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mmtl`` console script: the one error boundary of every subcommand.

    Expected failures print ``mmtl: error: ...`` on one line and exit 2; tracebacks only with
    ``--debug`` (anywhere on the command line) or MMTL_DEBUG=1.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MMTL_DEBUG", "") not in ("", "0")
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    common.INVOCATION[:] = [a for a in argv if a != "--debug"]
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        if getattr(args, "checkpoint", None):  # every command that loads a checkpoint takes --checkpoint
            preflight_checkpoint(args.checkpoint)  # its sizes, checked before torch is even imported
        return func(args)
    except TrainingInterrupted as exc:
        print(f"mmtl: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("mmtl: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the boundary: one line, the traceback only when debugging
        if debug:
            raise
        message, code = describe_failure(exc)
        print(f"mmtl: error: {message}", file=sys.stderr)
        return code

