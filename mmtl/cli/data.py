"""``mmtl data``: synthesize, convert, inspect and preview data sets."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from data_pipelines.pipes import allow_pipes
from mmtl.cli.common import Subcommands, add_field_flag, check_output_dir
from mmtl.config import SyntheticConfig
from mmtl.errors import MMTLError


def register(sub: Subcommands) -> None:
    """Add ``mmtl data`` and its actions."""
    data = sub.add_parser("data", help="create and inspect data sets").add_subparsers(
        dest="data_command", required=True, metavar="ACTION")
    _add_synth(data)
    _add_convert(data)
    _add_inspect(data)
    _add_preview(data)


def _add_synth(data: Subcommands) -> None:
    synth = data.add_parser("synth", help="write the synthetic 'shapes world' data set as webdataset shards")
    synth.add_argument("--out", required=True, help="output directory")
    add_field_flag(synth, "--num", SyntheticConfig, "train", show_default=True)
    add_field_flag(synth, "--val", SyntheticConfig, "val", show_default=True)
    add_field_flag(synth, "--test", SyntheticConfig, "test", show_default=True)
    add_field_flag(synth, "--seed", SyntheticConfig, "seed")
    add_field_flag(synth, "--difficulty", SyntheticConfig, "difficulty")
    add_field_flag(synth, "--image-size", SyntheticConfig, "image_size")
    add_field_flag(synth, "--shard-size", SyntheticConfig, "shard_size")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing data set")
    synth.add_argument("--modalities", default="image",
                       help="comma-separated renderings of each scene: image (png), depth (depth.png), audio (wav); "
                            "default image")
    synth.add_argument("--count", action="store_true", help="add the 'count' annotation (objects per scene)")
    synth.set_defaults(func=_cmd_synth)


def _cmd_synth(args: argparse.Namespace) -> int:
    from data_pipelines.shapes_world import write_shards
    import mmtl.components  # noqa: F401  (the tasks, whose annotation fields the data code counts)

    out = check_output_dir(args.out, "--out")
    if (out / "dataset.json").exists() and not args.overwrite:
        raise MMTLError(f"{out} already holds a data set; pass --overwrite to replace it")
    if args.overwrite:
        for old in out.glob("*.tar"):
            old.unlink()
    sizes = {"train": args.train, "val": args.val, "test": args.test}
    for split, n in sizes.items():
        if n < 0:
            raise MMTLError(f"--{'num' if split == 'train' else split} must be >= 0, got {n}")
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    try:
        info = write_shards(out, {k: v for k, v in sizes.items() if v > 0}, seed=args.seed,
                            difficulty=args.difficulty, image_size=args.image_size, shard_size=args.shard_size,
                            modalities=modalities, count=args.count)
    except ValueError as exc:  # unknown --modalities
        raise MMTLError(f"--modalities: {exc}") from None
    for split, stats in info["splits"].items():
        print(f"{split}: {stats['samples']} samples in {len(stats['shards'])} shard(s), tasks {stats['tasks']}")
    print(f"wrote {out}/dataset.json ({len(info['classes'])} classes)")
    return 0


def _add_convert(data: Subcommands) -> None:
    from data_pipelines.convert import format_names, source_options

    formats = format_names()
    conv = data.add_parser("convert", help="convert COCO JSON, an image folder, or JSONL/CSV/Parquet rows into shards",
                           description="Convert real data into webdataset shards + dataset.json (one split per run).")
    conv.add_argument("--format", required=True, metavar="FORMAT",
                      help=f"{', '.join(formats[:-1])} or {formats[-1]}" if len(formats) > 1 else formats[0])
    conv.add_argument("--out", required=True, help="output shard directory")
    conv.add_argument("--split", default="train", help="split name to write (default train)")
    for option in source_options():  # each format's own inputs, as it declares them
        conv.add_argument(option.command_flag, **option.argparse_keywords())
    conv.add_argument("--label-mode", choices=["single", "multi"], help="jsonl/csv/parquet: single- or multi-label (default multi)")
    conv.add_argument("--name", help="data set name in dataset.json")
    conv.add_argument("--maxcount", type=int, default=1000, help="samples per shard (default 1000)")
    conv.add_argument("--resize-max", type=int, default=0, metavar="PIXELS",
                      help="shrink images so the long side is at most PIXELS (keeps aspect; 0: keep size)")
    conv.add_argument("--jpeg-quality", type=int, default=90, help="quality of re-encoded JPEGs (default 90)")
    conv.add_argument("--workers", type=int, default=1, help="processes decoding/resizing images (default 1)")
    conv.add_argument("--overwrite", action="store_true", help="replace this split if the output already has it")
    conv.add_argument("--no-progress", action="store_true", help="no progress bar")
    conv.add_argument("--seed", type=int, default=0, help="seed of the sample order across shards (default 0)")
    conv.add_argument("--no-shuffle", action="store_true",
                      help="keep the input order (default: samples mixed across shards, so no shard holds one class)")
    conv.set_defaults(func=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> int:
    from data_pipelines.convert import source_options
    from data_pipelines.convert.write import ConvertOptions, convert_source
    import mmtl.components  # noqa: F401  (the tasks, whose annotation fields the data code counts)

    options = ConvertOptions(out=Path(args.out), split=args.split, maxcount=args.maxcount, resize_max=args.resize_max,
                             jpeg_quality=args.jpeg_quality, workers=args.workers, overwrite=args.overwrite,
                             progress=not args.no_progress, shuffle=not args.no_shuffle, seed=args.seed)
    source = {option.name: getattr(args, option.name) for option in source_options()}
    result = convert_source(args.format, options, label_mode=args.label_mode, name=args.name, **source)
    print(result.summary())
    print(f"wrote {args.out}/dataset.json ({len(result.info['classes'])} classes, label_mode {result.info['label_mode']})")
    return 0


def _add_allow_pipe(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-pipe", action="store_true",
                        help="allow a pipe: source, which runs its shell command (each command is logged)")


def _add_inspect(data: Subcommands) -> None:
    insp = data.add_parser("inspect", help="counts, class histogram, text and image statistics, corrupt samples")
    insp.add_argument("shards", help="shard directory, .tar file, brace pattern ('shards/{00000..00009}.tar') "
                                     "or pipe: command; shards without dataset.json are read through --map")
    insp.add_argument("--map", action="append", metavar="FIELD=PATH[,PATH]",
                      help="shards without dataset.json: read FIELD from a member or JSON path, e.g. "
                           "--map captions=txt --map labels=json.label (default: txt -> captions, cls -> labels)")
    insp.add_argument("--context-length", type=int, default=0, metavar="TOKENS",
                      help="count documents longer than this many text tokens (default: the tiny preset's)")
    insp.add_argument("--split", action="append", help="only this split (repeatable; default: all)")
    insp.add_argument("--limit", type=int, default=0, help="read at most this many samples per split (0: all)")
    insp.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_allow_pipe(insp)
    insp.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from data_pipelines.inspect import DEFAULT_CONTEXT_LENGTH, format_report, inspect_shards
    import mmtl.components  # noqa: F401  (the tasks, whose annotation fields the data code counts)

    allow_pipes(args.allow_pipe)
    report = inspect_shards(args.shards, splits=args.split, limit=args.limit, mapping=args.map or [],
                            context_length=args.context_length or DEFAULT_CONTEXT_LENGTH)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _add_preview(data: Subcommands) -> None:
    prev = data.add_parser("preview", help="draw a contact sheet of samples with their tags and captions")
    prev.add_argument("shards", help="shard directory, .tar file, brace pattern or pipe: command")
    prev.add_argument("--map", action="append", metavar="FIELD=PATH[,PATH]",
                      help="shards without dataset.json: read FIELD from a member or JSON path (as for inspect)")
    prev.add_argument("--out", required=True, help="output image (.png or .jpg)")
    prev.add_argument("--num", type=int, default=16, help="number of samples (default 16)")
    prev.add_argument("--split", help="split to draw (default: the first in dataset.json)")
    prev.add_argument("--columns", type=int, default=0, help="grid columns (default: about square)")
    _add_allow_pipe(prev)
    prev.set_defaults(func=_cmd_preview)


def _cmd_preview(args: argparse.Namespace) -> int:
    from data_pipelines.preview import contact_sheet
    import mmtl.components  # noqa: F401  (the tasks, whose annotation fields --map may name)

    allow_pipes(args.allow_pipe)
    path = contact_sheet(args.shards, args.out, num=args.num, split=args.split, columns=args.columns,
                         mapping=args.map or [])
    print(f"wrote {path}")
    return 0
