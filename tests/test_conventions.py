"""Command-line conventions: --version, an example in every --help, one table of exit codes, python -m mmtl."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmtl.cli import build_parser, main
from mmtl.cli.examples import EXAMPLES, EXIT_CODES
from mmtl.version import __version__

REPO = Path(__file__).resolve().parents[1]


def command_parsers(parser: argparse.ArgumentParser, path: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every parser of the command tree by its command path ("" is ``mmtl`` itself)."""
    found = {path: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.update(command_parsers(child, f"{path} {name}".strip()))
    return found


def test_every_help_ends_with_an_example_of_that_command() -> None:
    parsers = command_parsers(build_parser())
    assert set(parsers) == set(EXAMPLES)  # a new command needs its example
    for path, parser in parsers.items():
        text = parser.format_help()
        example = text[text.rindex("example:"):]
        assert f"mmtl {path}".strip() in example, (path, example)


def test_every_example_parses() -> None:
    for path, line in EXAMPLES.items():
        words = [w.strip("'") for w in re.findall(r"'[^']*'|\S+", line)][1:]
        args = build_parser().parse_args(words)
        assert callable(args.func), path


def test_version_and_python_dash_m(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"mmtl {__version__}"
    done = subprocess.run([sys.executable, "-m", "mmtl", "--version"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip() == f"mmtl {__version__}"
    done = subprocess.run([sys.executable, "-m", "mmtl", "export", "--checkpoint", "/nonexistent", "--out", "x"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("mmtl: error: no checkpoint found in /nonexistent")


def test_the_readme_exit_code_table_is_the_one_the_cli_lists() -> None:
    readme = (REPO / "README.md").read_text()
    start = readme.index("### Exit codes")
    table = readme[start:readme.index("\n## ", start)]
    codes = [int(c) for c in re.findall(r"^\| (\d+) \|", table, re.M)]
    assert codes == list(EXIT_CODES)
    assert all(f"{code:<4} {meaning}" in build_parser().format_help() for code, meaning in EXIT_CODES.items())
