"""One example per command, shown at the end of its ``--help``, and the exit codes every command shares."""
from __future__ import annotations

import argparse
import textwrap

# command path (as typed after `mmtl`) -> a command line that works after `mmtl quickstart`
EXAMPLES: dict[str, str] = {
    "": "mmtl quickstart",
    "data": "mmtl data synth --out data/shapes --num 2000",
    "data synth": "mmtl data synth --out data/shapes --num 2000 --modalities image,depth --count",
    "data convert": "mmtl data convert --format imagefolder --root photos/ --out data/photos --split train",
    "data inspect": "mmtl data inspect data/quickstart",
    "data preview": "mmtl data preview data/quickstart --out preview.png --num 16",
    "train": "mmtl train --config configs/experiment/quickstart.yaml train.steps=200 'train.loggers=[tensorboard,mlflow]'",
    "eval": "mmtl eval --checkpoint runs/quickstart --config runs/quickstart/config.yaml "
            "--baselines runs/quickstart-baselines/baselines.json --examples 3",
    "analyze": "mmtl analyze affinity --config configs/experiment/quickstart.yaml train.steps=50",
    "analyze affinity": "mmtl analyze affinity --config configs/experiment/quickstart.yaml train.steps=50",
    "baselines": "mmtl baselines --config configs/experiment/quickstart.yaml --out runs/quickstart-baselines",
    "tune-weights": "mmtl tune-weights --config configs/experiment/quickstart.yaml --values 1,3 --budget 4 --out runs/tuned",
    "predict": "mmtl predict --checkpoint runs/quickstart --image scene.png --text 'a document to summarize'",
    "serve": "mmtl serve --checkpoint runs/quickstart --port 8000",
    "model": "mmtl model info model.preset=small",
    "model info": "mmtl model info --config configs/experiment/quickstart.yaml model.preset=small",
    "finetune": "mmtl finetune --checkpoint runs/quickstart --config configs/experiment/finetune_depth.yaml",
    "export": "mmtl export --checkpoint runs/quickstart --out models/quickstart",
    "quickstart": "mmtl quickstart --compare train.steps=100",
}

# exit code -> meaning; README.md ("Exit codes") shows the same table
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "internal error (a bug: run with --debug for the traceback and report it)",
    2: "bad input: config, flags, files or data (one line says what and how to fix it); a missing optional extra",
    130: "interrupted by Ctrl-C (SIGINT); training saved a checkpoint to resume from",
    143: "stopped by SIGTERM; training saved a checkpoint to resume from",
}


def exit_code_text() -> str:
    """The exit codes as lines for ``mmtl --help``."""
    return "exit codes:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items())


def add_examples(parser: argparse.ArgumentParser, path: str = "") -> None:
    """Append ``example: ...`` to the help of ``parser`` and of every subcommand below it (keeping
    each existing epilog's text, wrapped), so that every ``--help`` ends with a command to copy."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    epilog = textwrap.fill(parser.epilog, 100) + "\n\n" if parser.epilog else ""
    example = EXAMPLES.get(path)
    if example is not None:
        epilog += f"example:\n  {example}"
    if not path:
        epilog += "\n\n" + exit_code_text()
    parser.epilog = epilog or None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                add_examples(child, f"{path} {name}".strip())
