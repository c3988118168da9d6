"""The ``mmtl`` command. User errors print one line and exit with code 2, never a traceback."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable

from mmtl.errors import MMTLError

EXIT_USER_ERROR = 2


def _cmd_synth(args: argparse.Namespace) -> int:
    from data_pipelines.synthetic import write_shards

    out = Path(args.out)
    if (out / "dataset.json").exists() and not args.overwrite:
        raise MMTLError(f"{out} already holds a data set; pass --overwrite to replace it")
    if args.overwrite:
        for old in out.glob("*.tar"):
            old.unlink()
    sizes = {"train": args.num, "val": args.val, "test": args.test}
    for split, n in sizes.items():
        if n < 0:
            raise MMTLError(f"--{'num' if split == 'train' else split} must be >= 0, got {n}")
    info = write_shards(out, {k: v for k, v in sizes.items() if v > 0}, seed=args.seed,
                        difficulty=args.difficulty, image_size=args.image_size, shard_size=args.shard_size)
    for split, stats in info["splits"].items():
        print(f"{split}: {stats['samples']} samples in {len(stats['shards'])} shard(s), tasks {stats['tasks']}")
    print(f"wrote {out}/dataset.json ({len(info['classes'])} classes)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from mmtl.config import load_config
    from mmtl.training.loop import train

    config = load_config(args.config, args.overrides)
    result = train(config, resume=args.resume)
    losses = ", ".join(f"{k}={v:.3f}" for k, v in result.final_losses.items())
    print(f"trained {config.train.steps} steps in {result.seconds:.0f}s ({losses})")
    print(f"checkpoint: {result.checkpoint}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from mmtl.evaluation.evaluate import evaluate, format_table
    from mmtl.inference import Predictor

    predictor = Predictor.from_pretrained(args.checkpoint, device=args.device)
    config = predictor.config
    if args.max_samples is not None:
        config.eval.max_samples = args.max_samples
    result = evaluate(predictor.components, config, predictor.device, data_path=args.data, split=args.split)
    print(f"{result.samples} samples of split {result.split!r}")
    print(format_table(result))
    if args.output:
        Path(args.output).write_text(json.dumps(result.to_dict(), indent=2))
        print(f"wrote {args.output}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from mmtl.inference import Predictor

    text = args.text
    if args.text_file:
        try:
            text = Path(args.text_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MMTLError(f"cannot read --text-file {args.text_file}: {exc}") from None
    if args.image is None and not text:
        raise MMTLError("give --image, --text/--text-file, or both")
    predictor = Predictor.from_pretrained(args.checkpoint, device=args.device)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    result = predictor.predict(image=args.image, text=text, tasks=tasks)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        for name, output in result.outputs.items():
            print(f"{name}: {predictor.tasks[name].format(output)}")
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from mmtl.quickstart import run_quickstart

    return run_quickstart(args.overrides)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="mmtl", description="Multimodal multi-task learning.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="create and inspect data sets").add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = data.add_parser("synth", help="write the synthetic 'shapes world' data set as webdataset shards")
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--num", type=int, default=3000, help="training samples (default 3000)")
    synth.add_argument("--val", type=int, default=200, help="validation samples (default 200)")
    synth.add_argument("--test", type=int, default=200, help="test samples (default 200)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--difficulty", choices=["easy", "medium", "hard"], default="medium")
    synth.add_argument("--image-size", type=int, default=64)
    synth.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing data set")
    synth.set_defaults(func=_cmd_synth)

    train = sub.add_parser("train", help="train a model", epilog="overrides: dotted keys, e.g. train.steps=200 model.preset=tiny")
    train.add_argument("--config", help="experiment YAML (default: the built-in quickstart experiment)")
    train.add_argument("--resume", help="'latest' or a checkpoint directory to continue from")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser("eval", help="evaluate a checkpoint on a held-out split, next to trivial baselines")
    ev.add_argument("--checkpoint", required=True, help="run or checkpoint directory")
    ev.add_argument("--data", help="shard directory (default: the one the model was trained on)")
    ev.add_argument("--split", default="test")
    ev.add_argument("--max-samples", type=int)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--output", help="write the metrics as JSON to this file")
    ev.set_defaults(func=_cmd_eval)

    pr = sub.add_parser("predict", help="run a trained model on an image-text pair")
    pr.add_argument("--checkpoint", required=True, help="run or checkpoint directory")
    pr.add_argument("--image", help="image file")
    pr.add_argument("--text", help="paired text (a document to summarize)")
    pr.add_argument("--text-file", help="read the paired text from this file")
    pr.add_argument("--tasks", help="comma-separated tasks (default: all the model has)")
    pr.add_argument("--device", default="cpu")
    pr.add_argument("--json", action="store_true", help="print JSON instead of text")
    pr.set_defaults(func=_cmd_predict)

    qs = sub.add_parser("quickstart", help="synthesize data, train the tiny model on all tasks, evaluate, predict")
    qs.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=100")
    qs.set_defaults(func=_cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mmtl`` console script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except MMTLError as exc:
        print(f"mmtl: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("mmtl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
