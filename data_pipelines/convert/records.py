"""What every converter reader is and produces: a :class:`SourceFormat` that declares its options,
:class:`Record` s, a :class:`ReadReport` of what it left out, safe unique keys, text decoding with a
fallback, and paths confined to their base folder."""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mmtl.errors import MMTLError

# text that is not UTF-8 is decoded with these, in order (latin-1 accepts any byte)
FALLBACK_ENCODINGS = ("cp1252", "latin-1")


@dataclass
class Record:
    """One input item before its image is processed (a file path, or the image bytes themselves)."""

    key: str
    annotation: dict[str, Any]
    image_path: str | None = None
    # further modalities: row field (depth, audio) -> file path; their checked bytes by sample key
    extra_paths: dict[str, str] = field(default_factory=dict)
    extra_data: dict[str, bytes] = field(default_factory=dict)
    image_bytes: bytes | None = None  # e.g. a Parquet column of encoded images


@dataclass
class ReadReport:
    """What a reader left out (reason -> count), text that needed a fallback encoding, and warnings."""

    skipped: Counter = field(default_factory=Counter)
    text_fallback: int = 0
    null_labels: int = 0  # null entries of label lists left out (never a class named "None")
    warnings: list[str] = field(default_factory=list)
    outside_root: str = ""  # the folder that skipped ``path_outside_root`` paths were checked against

    def skip_outside_root(self, root: Path) -> None:
        """Count one sample left out because a path of it leaves ``root``."""
        self.skipped["path_outside_root"] += 1
        self.outside_root = str(root)


def outside_root_hint(root: str) -> str:
    """The sentence that says which folder paths must stay in, and the flag that lifts it."""
    return (f"paths that leave the image folder {root or '(--images / --image-root)'} (../ or absolute) "
            f"are read only with --allow-outside-root")


def decode_text(data: bytes) -> tuple[str, int]:
    """Bytes -> text: UTF-8 when possible, else per line with a fallback; returns (text, fallback lines)."""
    try:
        return data.decode("utf-8-sig"), 0
    except UnicodeDecodeError:
        pass
    lines, fallback = [], 0
    for line in data.splitlines(keepends=True):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            fallback += 1
            lines.append(_decode_fallback(line))
    text = "".join(lines)
    return (text[1:] if text.startswith("\ufeff") else text), fallback


def _decode_fallback(line: bytes) -> str:
    for encoding in FALLBACK_ENCODINGS:
        try:
            return line.decode(encoding)
        except UnicodeDecodeError:
            continue
    return line.decode("latin-1")  # unreachable: latin-1 maps every byte


def read_text_file(path: Path, what: str) -> tuple[str, int]:
    """Read a text input file, with a clear error when it is missing or unreadable."""
    if not path.is_file():
        raise MMTLError(f"{what} file not found: {path}")
    try:
        return decode_text(path.read_bytes())
    except OSError as exc:
        raise MMTLError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None


_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class KeyMaker:
    """Webdataset-safe unique keys (no dots, which webdataset reads as an extension separator)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, name: str) -> str:
        base = _KEY_UNSAFE.sub("_", name).strip("_") or "sample"
        key, n = base, 1
        while key in self.used:
            n += 1
            key = f"{base}_{n}"
        self.used.add(key)
        return key


def confined_path(base: Path, name: str, allow_outside: bool) -> str | None:
    """``base / name`` when it stays inside ``base`` (or ``allow_outside``); None for ``../`` or absolute escapes."""
    joined = base / name
    if allow_outside:
        return str(joined)
    # lexical, not realpath: a symlink the user put inside the folder is theirs to follow
    root = os.path.abspath(base)
    target = os.path.abspath(joined)
    return str(joined) if target == root or target.startswith(root.rstrip(os.sep) + os.sep) else None


@dataclass(frozen=True)
class SourceOption:
    """One input option of a reader (``mmtl data convert --<name>``), declared next to the reader."""

    name: str  # keyword of convert_source
    help: str
    required: bool = False
    action: str = "store"  # argparse action: "store", "store_true" or "append"
    metavar: str | None = None
    flag: str = ""  # the command-line flag when it is not --name with dashes

    @property
    def command_flag(self) -> str:
        """The command-line flag, e.g. ``--image-root``."""
        return self.flag or "--" + self.name.replace("_", "-")

    def argparse_keywords(self) -> dict[str, Any]:
        """The keywords of ``ArgumentParser.add_argument`` for :attr:`command_flag`."""
        keywords: dict[str, Any] = {"dest": self.name, "action": self.action, "help": self.help}
        return {**keywords, "metavar": self.metavar} if self.metavar else keywords


@dataclass(frozen=True)
class SourceFormat:
    """One ``--format``: its options, its reader, its default label mode and data set name.

    ``read(inputs, report)`` gets the options by name and returns the records and the class list
    (None: the classes are the labels found).
    """

    options: tuple[SourceOption, ...]
    read: Callable[[dict[str, Any], ReadReport], tuple[list[Record], list[str] | None]]
    label_mode: str
    dataset_name: Callable[[dict[str, Any]], str]

    @property
    def required(self) -> tuple[str, ...]:
        """Names of the options this format cannot do without."""
        return tuple(option.name for option in self.options if option.required)


ALLOW_OUTSIDE_ROOT = SourceOption(
    "allow_outside_root", "read image/file paths that leave --images / --image-root (../ or absolute); "
    "refused by default", action="store_true")
