"""The ``mmtl`` command line: one module per command, each holding its flags next to its handler."""
from mmtl.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
