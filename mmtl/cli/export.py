"""``mmtl export``: the inference-only folder of a trained model (weights, config, vocabulary, card)."""
from __future__ import annotations

import argparse

from mmtl.cli.common import Subcommands, check_output_dir


def register(sub: Subcommands) -> None:
    """Add ``mmtl export``."""
    ex = sub.add_parser("export", help="write a shareable, inference-only model folder (no optimiser state)",
                        description="Write model.safetensors (the inference weights), config.yaml, meta.json "
                                    "(tasks, classes, vocabulary) and README.md (the model card) to --out; the "
                                    "folder loads with Predictor.from_pretrained and mmtl predict/serve/eval.")
    ex.add_argument("--checkpoint", required=True,
                    help="run or checkpoint directory, or a fine-tuned model (exported merged with its base)")
    ex.add_argument("--out", required=True, help="the folder to write (it must not exist, unless --overwrite)")
    ex.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    ex.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from mmtl.api import export
    from mmtl.exporting import folder_size

    out = export(args.checkpoint, check_output_dir(args.out, "--out"), overwrite=args.overwrite)
    print(f"wrote {out} ({folder_size(out) / 2**20:.1f} MiB: model.safetensors, config.yaml, meta.json, README.md)")
    return 0
