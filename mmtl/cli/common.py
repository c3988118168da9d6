"""What the commands share: output-path checks, config loading, and flags derived from config fields."""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import types
import typing
from pathlib import Path
from typing import Any

from data_pipelines.pipes import allow_pipes
from mmtl import config as schema
from mmtl.errors import MMTLError

Subcommands = argparse._SubParsersAction  # what add_subparsers returns: each command module adds its parser to it
INVOCATION: list[str] = []  # the arguments of the running command (set by mmtl.cli.app.main)


def command_line() -> str:
    """The running command as one shell line (recorded in model cards)."""
    return "mmtl " + shlex.join(INVOCATION)


def load_experiment(path: str | None, overrides: list[str], training: bool | None = True) -> schema.ExperimentConfig:
    """The experiment config of a command: ``path`` (None: the built-in one) plus ``key=value`` overrides.

    Its sizes are checked first, before torch is imported (``schema.preflight_config``; ``training``: a
    model is trained from it, False: built for inference, None: the command builds no model from it),
    so that a config too large to build is refused in a few MB. Call it before importing torch-heavy code.
    """
    raw = schema.read_yaml_tree(Path(path)) if path is not None else {}  # read once, for both steps
    schema.preflight_config(raw, overrides, training)
    import mmtl.components  # noqa: F401  (imported here, not at start-up: it imports torch; fills the registries)

    config = schema.resolve_config(raw, overrides)
    allow_pipes(config.data.allow_pipe)  # the user's own settings are the only ones that may allow pipe: sources
    return config


def add_field_flag(parser: argparse._ActionsContainer, flag: str, cls: type, name: str, *, keep_default: bool = True,
                   show_default: bool = False, help_suffix: str = "") -> None:
    """Add ``flag`` for field ``name`` of config dataclass ``cls``: its type, choices, help and default.

    ``keep_default=False`` leaves the flag's default None (the config's value, e.g. a checkpoint's, applies);
    ``show_default`` ends the help with ``(default VALUE)``.
    """
    spec = next(f for f in dataclasses.fields(cls) if f.name == name)
    kind = typing.get_type_hints(cls)[name]
    # an optional setting's flag reads its value type (the flag left out keeps the config's value, None included)
    if typing.get_origin(kind) in (types.UnionType, typing.Union):
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    help_text = spec.metadata.get("help")
    if help_text is not None:
        help_text += (f" (default {spec.default})" if show_default else "") + help_suffix
    default = spec.default if keep_default else None
    if kind is bool:  # --flag and --no-flag, so a setting that defaults to true can be turned off
        parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        return
    metavar = flag.lstrip("-").replace("-", "_").upper()
    choices: tuple[Any, ...] | None = spec.metadata.get("choices")
    parser.add_argument(flag, dest=name, metavar=None if choices else metavar, type=kind, default=default,
                        choices=list(choices) if choices else None, help=help_text)


def check_output_dir(path: str | Path, what: str) -> Path:
    """``path`` as a directory to write into: an existing file there is a clear error."""
    if "\x00" in str(path):
        raise MMTLError(f"{what} {str(path)!r} holds a NUL character; give a plain path")
    path = Path(path)
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise MMTLError(f"{what} {path} cannot be a directory: {blocker} is a file; choose another path or remove it")
    return path


def check_output_file(path: str | Path | None, what: str) -> None:
    """``path`` as a file to write: a directory there is a clear error (checked before any long work)."""
    if path is None:
        return
    if "\x00" in str(path):
        raise MMTLError(f"{what} {str(path)!r} holds a NUL character; give a plain path")
    path = Path(path)
    if path.is_dir():
        raise MMTLError(f"{what} {path} is a directory; give a file path, e.g. {path / 'out.json'}")
    check_output_dir(path.parent, f"the folder of {what}").mkdir(parents=True, exist_ok=True)
