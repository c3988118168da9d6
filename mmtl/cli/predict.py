"""``mmtl predict``: run a trained model on one input, a JSONL file of pairs, or an image folder."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mmtl.cli.common import Subcommands, add_field_flag, check_output_file
from mmtl.config import EvalConfig, GenerationConfig
from mmtl.errors import MMTLError

if TYPE_CHECKING:  # the CLI imports torch-heavy modules only when a command runs
    from mmtl.inference import PredictOptions, Predictor

MAX_CLI_BEAMS = 8  # as `mmtl serve`'s default --max-beams: memory and time grow with the beam
# generation flags and the GenerationConfig fields they set (None: the checkpoint's eval.generation value)
GENERATION_FLAGS = {
    "--max-length": "max_length", "--num-beams": "num_beams", "--length-penalty": "length_penalty",
    "--sample": "do_sample", "--temperature": "temperature", "--top-k": "top_k", "--top-p": "top_p",
    "--no-repeat-ngram": "no_repeat_ngram_size", "--no-immediate-repeat": "no_immediate_repeat_size",
    "--repetition-penalty": "repetition_penalty", "--seed": "seed",
    "--whole-words": "whole_words", "--repeat-document-ngrams": "repeat_document_ngrams",
}


def register(sub: Subcommands) -> None:
    """Add ``mmtl predict``."""
    pr = sub.add_parser(
        "predict", help="run a trained model on one image-text pair, a JSONL file of pairs, or an image folder",
        epilog="many pairs: --input pairs.jsonl (fields image, text, id; image paths relative to the file) "
               "or --images DIR, with --output preds.jsonl; re-running skips ids already in the output")
    pr.add_argument("--checkpoint", required=True, help="run or checkpoint directory")
    pr.add_argument("--image", help="image file")
    pr.add_argument("--text", help="paired text (a document to summarize)")
    pr.add_argument("--text-file", help="read the paired text from this file")
    pr.add_argument("--modality", action="append", metavar="NAME=FILE",
                    help="an input of a further modality of the model, e.g. depth=scene.depth.png or audio=scene.wav "
                         "(repeatable)")
    pr.add_argument("--tasks", help="comma-separated tasks (default: all the model has)")
    pr.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    pr.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                    help="fp32, or bf16/fp16 autocast (fp16 on CUDA only)")
    pr.add_argument("--json", action="store_true", help="print JSON instead of text")
    many = pr.add_argument_group("many pairs")
    many.add_argument("--input", help="JSONL file of pairs (fields image, text, id; depth/audio paths for models that have them)")
    many.add_argument("--images", help="predict every image file under this directory (id = relative path)")
    many.add_argument("--output", help="JSONL file the predictions are appended to")
    many.add_argument("--batch-size", type=int, default=16, help="pairs per forward pass (default 16)")
    many.add_argument("--allow-outside-paths", action="store_true",
                      help="let --input rows name files outside the JSONL file's folder (absolute or ../ paths)")
    many.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen = pr.add_argument_group("generation (captioning, summarization)")
    for flag, name in GENERATION_FLAGS.items():
        add_field_flag(gen, flag, GenerationConfig, name, keep_default=False)
    rec = pr.add_argument_group("recognition")
    rec.add_argument("--top-k-tags", type=int, help="keep at most N tags (highest scores first)")
    add_field_flag(rec, "--threshold", EvalConfig, "threshold", keep_default=False,
                   help_suffix=" (default: the checkpoint's eval.threshold)")
    pr.set_defaults(func=_cmd_predict)


def _generation_overrides(args: argparse.Namespace) -> dict:
    """The generation fields the user set on the command line."""
    return {name: getattr(args, name) for name in GENERATION_FLAGS.values() if getattr(args, name) is not None}


def _read_text_file(path: str) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise MMTLError(f"cannot read --text-file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise MMTLError(f"--text-file {path} is not UTF-8 text") from None


def _check_inputs(args: argparse.Namespace, text: str | None, many: bool) -> dict[str, str]:
    """Reject flag combinations that cannot go together (before the model loads); return the --modality files."""
    if args.input and args.images:
        raise MMTLError("give --input or --images, not both")
    if many and not args.output:
        raise MMTLError("--input/--images need --output FILE (JSONL)")
    if args.input and (args.image or text):
        raise MMTLError("--image/--text go with a single pair; with --input, put them in the JSONL rows")
    if args.images and args.image:
        raise MMTLError("give --image (one file) or --images (a directory), not both")
    extra = _modality_files(args.modality or [])
    if extra and many:
        raise MMTLError("--modality goes with a single input; it cannot be combined with --input/--images")
    check_output_file(args.output, "--output")
    if args.num_beams is not None and args.num_beams > MAX_CLI_BEAMS:
        raise MMTLError(f"--num-beams is {args.num_beams}; the most is {MAX_CLI_BEAMS} (memory and time grow with it)")
    if args.batch_size < 1:
        raise MMTLError(f"--batch-size must be >= 1, got {args.batch_size}")
    return extra


def _cmd_predict(args: argparse.Namespace) -> int:
    from mmtl.inference import Predictor, check_text

    text = _read_text_file(args.text_file) if args.text_file else args.text
    many = args.input is not None or args.images is not None
    extra = _check_inputs(args, text, many)
    if not many:
        text = check_text(text)
        if args.image is None and text is None and not extra:
            raise MMTLError("give --image, --text/--text-file, or both (or --input/--images for many pairs)")
    predictor = Predictor.from_pretrained(args.checkpoint, device=args.device, precision=args.precision)
    options = predictor.options(args.tasks, _generation_overrides(args), args.threshold, args.top_k_tags)
    if many:
        return _predict_many(predictor, options, args, text)
    result = predictor.run([predictor.prepare(args.image, text, inputs=extra)], options)[0]
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        for name, output in result.outputs.items():
            print(f"{name}: {predictor.tasks[name].format(output)}")
    return 0


def _predict_many(predictor: Predictor, options: PredictOptions, args: argparse.Namespace, text: str | None) -> int:
    from mmtl.batch_predict import count_rows, image_dir_pairs, predict_to_jsonl, read_jsonl_pairs

    if args.input:
        pairs, total = read_jsonl_pairs(args.input, args.allow_outside_paths), count_rows(args.input)
    else:
        pairs = image_dir_pairs(args.images, text)
        total = len(pairs)
    try:
        summary = predict_to_jsonl(predictor, pairs, args.output, options, args.batch_size, total,
                                   progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"mmtl: interrupted; {args.output} keeps every finished batch, re-run the same command to continue",
              file=sys.stderr)
        return 130
    print(f"{summary.written} predictions written to {args.output} ({summary.errors} with errors, "
          f"{summary.skipped} skipped as already done)")
    return 0


def _modality_files(values: list[str]) -> dict[str, str]:
    """``--modality NAME=FILE`` values as {name: file}."""
    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name.strip() or not path:
            raise MMTLError(f"--modality {value!r} is not of the form NAME=FILE (e.g. depth=scene.depth.png)")
        out[name.strip()] = path
    return out
