"""The ``mmtl`` command. User errors print one line and exit with code 2, never a traceback."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from mmtl.errors import MMTLError, TrainingInterrupted, describe_failure


MAX_CLI_BEAMS = 8  # as `mmtl serve`'s default --max-beams: memory and time grow with the beam


def _check_output_dir(path: str | Path, what: str) -> Path:
    """``path`` as a directory to write into: an existing file there is a clear error."""
    if "\x00" in str(path):
        raise MMTLError(f"{what} {str(path)!r} holds a NUL character; give a plain path")
    path = Path(path)
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise MMTLError(f"{what} {path} cannot be a directory: {blocker} is a file; choose another path or remove it")
    return path


def _check_output_file(path: str | Path | None, what: str) -> None:
    """``path`` as a file to write: a directory there is a clear error (checked before any long work)."""
    if path is None:
        return
    if "\x00" in str(path):
        raise MMTLError(f"{what} {str(path)!r} holds a NUL character; give a plain path")
    path = Path(path)
    if path.is_dir():
        raise MMTLError(f"{what} {path} is a directory; give a file path, e.g. {path / 'out.json'}")
    _check_output_dir(path.parent, f"the folder of {what}").mkdir(parents=True, exist_ok=True)


def _cmd_synth(args: argparse.Namespace) -> int:
    from data_pipelines.synthetic import write_shards

    out = _check_output_dir(args.out, "--out")
    if (out / "dataset.json").exists() and not args.overwrite:
        raise MMTLError(f"{out} already holds a data set; pass --overwrite to replace it")
    if args.overwrite:
        for old in out.glob("*.tar"):
            old.unlink()
    sizes = {"train": args.num, "val": args.val, "test": args.test}
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


def _cmd_convert(args: argparse.Namespace) -> int:
    from data_pipelines.convert import ConvertOptions, convert_source

    options = ConvertOptions(out=Path(args.out), split=args.split, maxcount=args.maxcount, resize_max=args.resize_max,
                             jpeg_quality=args.jpeg_quality, workers=args.workers, overwrite=args.overwrite,
                             progress=not args.no_progress, shuffle=not args.no_shuffle, seed=args.seed)
    result = convert_source(args.format, options, images=args.images, captions=args.captions,
                            instances=args.instances, root=args.root, input=args.input, image_root=args.image_root,
                            mapping=args.map or [], allow_outside_root=args.allow_outside_root,
                            label_mode=args.label_mode, name=args.name)
    print(result.summary())
    print(f"wrote {args.out}/dataset.json ({len(result.info['classes'])} classes, label_mode {result.info['label_mode']})")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from data_pipelines.inspect import DEFAULT_CONTEXT_LENGTH, format_report, inspect_shards

    report = inspect_shards(args.shards, splits=args.split, limit=args.limit, mapping=args.map or [],
                            context_length=args.context_length or DEFAULT_CONTEXT_LENGTH)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _cmd_preview(args: argparse.Namespace) -> int:
    from data_pipelines.preview import contact_sheet

    path = contact_sheet(args.shards, args.out, num=args.num, split=args.split, columns=args.columns,
                         mapping=args.map or [])
    print(f"wrote {path}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from mmtl.config import load_config
    from mmtl.training.validation import train

    config = load_config(args.config, args.overrides)
    _check_output_dir(config.output_dir, "output_dir")
    result = train(config, resume=args.resume)
    losses = ", ".join(f"{k}={v:.3f}" for k, v in result.final_losses.items())
    print(f"trained {config.train.steps} steps in {result.seconds:.0f}s ({losses})")
    print(f"checkpoint: {result.checkpoint}")
    summary = result.run_dir / "validation.json"
    if config.train.eval_every and summary.is_file():
        record = json.loads(summary.read_text())
        if record["stop_reason"]:
            print(record["stop_reason"])
        print(f"best checkpoint (validation.select={record['select']}): {record['best_checkpoint']} "
              f"(step {record['best_step']})")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from mmtl.evaluation.evaluate import evaluate, format_table
    from mmtl.inference import Predictor

    _check_output_file(args.output, "--output")  # before the evaluation, not after it
    if args.baselines:  # read first: a bad file should fail before a long evaluation
        from mmtl.evaluation.baselines import baseline_split_metrics, read_baselines

        baselines = read_baselines(args.baselines)
        baseline_split_metrics(baselines, args.split)
    predictor = Predictor.from_pretrained(args.checkpoint, device=args.device)
    config = predictor.config
    if args.max_samples is not None:
        config.eval.max_samples = args.max_samples
    result = evaluate(predictor.components, config, predictor.device, data_path=args.data, split=args.split)
    sources = ", ".join(f"{path} ({part['samples']})" for path, part in result.sources.items())
    print(f"{result.samples} samples of split {result.split!r} from {sources}")
    print(format_table(result))
    output = result.to_dict()
    if args.baselines:
        output["delta"] = _report_delta(predictor, config, result, baselines, args.tolerance)
    if args.output:
        Path(args.output).write_text(json.dumps(output, indent=2))
        print(f"wrote {args.output}")
    return 0


def _report_delta(predictor, config, result, baselines: dict, tolerance: float) -> dict:
    """Print Δm with its per-task verdicts (overall, then per source) and the savings; return the report."""
    from mmtl.evaluation.baselines import compare_with_baselines
    from mmtl.evaluation.delta import DeltaReport, format_delta, format_verdicts
    from mmtl.evaluation.savings import format_savings, forward_flops_per_sample

    lower = {t.name: tuple(getattr(t, "lower_is_better", ())) for t in predictor.components.tasks}
    report = compare_with_baselines(result, baselines, tolerance, lower, predictor.model.parameter_report(),
                                    lambda tasks: forward_flops_per_sample(predictor.components, config, tasks),
                                    predictor.components.vocab.size)
    print()
    print("against the single-task models" + (" (all sources pooled):" if len(result.sources) > 1 else ":"))
    print(format_delta(DeltaReport.from_dict(report)))
    for source, part in report["sources"].items():
        per_source = DeltaReport.from_dict(part)
        shown = "n/a (every baseline value is 0)" if per_source.delta_m is None else f"{100 * per_source.delta_m:+.2f}%"
        print(f"\nsource {source}: Δm = {shown}")
        print("\n".join(format_verdicts(per_source)))
    if "savings_note" in report:
        print(report["savings_note"])
    if "parameters" in report:
        print(format_savings("parameters", report["parameters"]))
    if "flops" in report:
        print(format_savings("forward FLOPs per sample", report["flops"], unit="FLOP"))
    if "vocabulary_note" in report:
        print(report["vocabulary_note"])
    return report


def _cmd_affinity(args: argparse.Namespace) -> int:
    from mmtl.balancing.affinity import format_affinity, plot_affinity
    from mmtl.training.affinity import measure_affinity
    from mmtl.config import load_config

    config = load_config(args.config, args.overrides)
    if args.every < 1 or args.lookahead_lr <= 0:
        raise MMTLError("--every must be >= 1 and --lookahead-lr positive")
    if len(config.tasks) < 2:
        raise MMTLError("affinity needs at least two tasks in the config")
    out = Path(args.out) if args.out else Path(f"{config.output_dir}-affinity")
    config.output_dir = str(out / "run")
    result = measure_affinity(config, args.every, args.lookahead_lr, args.max_groups)
    print(format_affinity(result))
    out.mkdir(parents=True, exist_ok=True)
    (out / "affinity.json").write_text(json.dumps(result.to_dict(), indent=2))
    print(f"wrote {out / 'affinity.json'} and {plot_affinity(result, out / 'affinity.png')}")
    return 0


def _cmd_baselines(args: argparse.Namespace) -> int:
    from mmtl.config import load_config
    from mmtl.baselines import train_baselines

    config = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path(f"{config.output_dir}-baselines")
    path = train_baselines(config, out, resume=args.resume)
    record = json.loads(path.read_text())
    for task, entry in record["tasks"].items():
        metric = entry["primary_metric"]
        sources = ", ".join(f"{source} {values[metric]:.3f}" for source, values in entry.get("source_metrics", {}).items())
        print(f"{task}: {metric} {entry['metrics'][metric]:.3f} (single-task model in {entry['run']}; "
              f"per source: {sources})")
    print(f"wrote {path}")
    return 0


GENERATION_FLAGS = {  # CLI flag dest -> GenerationConfig field
    "max_length": "max_length", "num_beams": "num_beams", "length_penalty": "length_penalty",
    "sample": "do_sample", "temperature": "temperature", "top_k": "top_k", "top_p": "top_p",
    "no_repeat_ngram": "no_repeat_ngram_size", "repetition_penalty": "repetition_penalty", "seed": "seed",
}


def _generation_overrides(args: argparse.Namespace) -> dict:
    """The generation fields the user set on the command line."""
    return {key: getattr(args, dest) for dest, key in GENERATION_FLAGS.items() if getattr(args, dest) is not None}


def _read_text_file(path: str) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise MMTLError(f"cannot read --text-file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise MMTLError(f"--text-file {path} is not UTF-8 text") from None


def _cmd_predict(args: argparse.Namespace) -> int:
    from mmtl.inference import Predictor, check_text

    text = _read_text_file(args.text_file) if args.text_file else args.text
    many = args.input is not None or args.images is not None
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
    _check_output_file(args.output, "--output")
    if args.num_beams is not None and args.num_beams > MAX_CLI_BEAMS:
        raise MMTLError(f"--num-beams is {args.num_beams}; the most is {MAX_CLI_BEAMS} (memory and time grow with it)")
    if args.batch_size < 1:
        raise MMTLError(f"--batch-size must be >= 1, got {args.batch_size}")
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


def _predict_many(predictor, options, args: argparse.Namespace, text: str | None) -> int:
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


def _cmd_serve(args: argparse.Namespace) -> int:
    from mmtl.serve import ServerLimits, serve

    for flag, value in (("--max-body-mb", args.max_body_mb), ("--max-pixels", args.max_pixels),
                        ("--max-text-chars", args.max_text_chars), ("--max-beams", args.max_beams),
                        ("--max-concurrency", args.max_concurrency), ("--read-timeout", args.read_timeout),
                        ("--workers", args.workers)):
        if not value > 0 or value != value or value == float("inf"):
            raise MMTLError(f"{flag} must be positive and finite, got {value}")
    if args.max_beams > 64:
        raise MMTLError(f"--max-beams must be at most 64, got {args.max_beams}")
    limits = ServerLimits(max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_pixels=args.max_pixels,
                          max_text_chars=args.max_text_chars, max_beams=args.max_beams,
                          max_concurrency=args.max_concurrency, read_timeout_s=args.read_timeout)
    serve(args.checkpoint, args.host, args.port, limits, args.max_batch, args.max_wait_ms, device=args.device,
          precision=args.precision, workers=args.workers)
    return 0


def _cmd_model_info(args: argparse.Namespace) -> int:
    from mmtl.config import load_config
    from mmtl.evaluation.info import model_info

    print(model_info(load_config(args.config, args.overrides)))
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


def _cmd_finetune(args: argparse.Namespace) -> int:
    from mmtl.config import load_config
    from mmtl.finetune import format_regression, run_finetune

    listed = lambda values: [v.strip() for value in values or [] for v in value.split(",") if v.strip()]  # noqa: E731
    overrides = list(args.overrides)
    if args.add_modality:
        overrides.append(f"finetune.add_modalities=[{','.join(listed(args.add_modality))}]")
    if args.add_task:
        overrides.append(f"finetune.add_tasks=[{','.join(listed(args.add_task))}]")
    if args.strategy:
        overrides.append(f"finetune.strategy={args.strategy}")
    if args.align_weight is not None:
        overrides.append(f"finetune.align_weight={args.align_weight}")
    config = load_config(args.config, overrides)
    result = run_finetune(args.checkpoint, config, resume=args.resume)
    losses = ", ".join(f"{k}={v:.3f}" for k, v in result.final_losses.items())
    print(f"fine-tuned {config.train.steps} steps in {result.seconds:.0f}s ({result.trained_parameters:,} trained "
          f"parameters; {losses})")
    if result.regression:
        print(f"old tasks on their own {config.finetune.regression_split} data, before and after:")
        print(format_regression(result.regression))
    print(f"fine-tuned model: {result.directory} (new tensors only; loads with the base checkpoint)")
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from mmtl.quickstart import run_quickstart

    return run_quickstart(args.overrides)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="mmtl", description="Multimodal multi-task learning.")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (allowed anywhere on the command line)")
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
    synth.add_argument("--modalities", default="image",
                       help="comma-separated renderings of each scene: image (png), depth (depth.png), audio (wav); "
                            "default image")
    synth.add_argument("--count", action="store_true", help="add the 'count' annotation (objects per scene)")
    synth.set_defaults(func=_cmd_synth)

    conv = data.add_parser("convert", help="convert COCO JSON, an image folder, or JSONL/CSV/Parquet rows into shards",
                           description="Convert real data into webdataset shards + dataset.json (one split per run).")
    conv.add_argument("--format", required=True, metavar="FORMAT", help="coco, imagefolder, jsonl, csv or parquet")
    conv.add_argument("--out", required=True, help="output shard directory")
    conv.add_argument("--split", default="train", help="split name to write (default train)")
    conv.add_argument("--images", help="coco: directory of the image files")
    conv.add_argument("--captions", help="coco: captions_*.json")
    conv.add_argument("--instances", help="coco: instances_*.json (object categories -> recognition labels)")
    conv.add_argument("--root", help="imagefolder: ROOT/<class>/<images> (single-label recognition)")
    conv.add_argument("--input", help="jsonl/csv/parquet: the rows (fields image, labels, captions, document, summaries, source, key; "
                                       "depth (a depth map file), audio (a wav/flac file), count)")
    conv.add_argument("--image-root", help="jsonl/csv/parquet: directory the image paths are relative to (default: the input's)")
    conv.add_argument("--allow-outside-root", action="store_true",
                      help="read image/file paths that leave --images / --image-root (../ or absolute); refused by default")
    conv.add_argument("--map", action="append", metavar="FIELD=PATH[,PATH]",
                      help="jsonl/csv/parquet: read FIELD from column(s) or nested paths, e.g. --map document=dialogue "
                           "--map summaries=summary1,summary2 --map summaries=summary.outcome --map captions=annotations[].text")
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
    insp.set_defaults(func=_cmd_inspect)

    prev = data.add_parser("preview", help="draw a contact sheet of samples with their tags and captions")
    prev.add_argument("shards", help="shard directory, .tar file, brace pattern or pipe: command")
    prev.add_argument("--map", action="append", metavar="FIELD=PATH[,PATH]",
                      help="shards without dataset.json: read FIELD from a member or JSON path (as for inspect)")
    prev.add_argument("--out", required=True, help="output image (.png or .jpg)")
    prev.add_argument("--num", type=int, default=16, help="number of samples (default 16)")
    prev.add_argument("--split", help="split to draw (default: the first in dataset.json)")
    prev.add_argument("--columns", type=int, default=0, help="grid columns (default: about square)")
    prev.set_defaults(func=_cmd_preview)

    train = sub.add_parser("train", help="train a model", epilog="overrides: dotted keys, e.g. train.steps=200 model.preset=tiny")
    train.add_argument("--config", help="experiment YAML (default: the built-in quickstart experiment)")
    train.add_argument("--resume", help="'latest' or a checkpoint directory to continue from")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser("eval", help="evaluate a checkpoint on a held-out split, next to trivial baselines")
    ev.add_argument("--checkpoint", required=True, help="run or checkpoint directory")
    ev.add_argument("--data", help="shard directory (default: the held-out split of every source the model was "
                                   "trained on, each for the tasks it feeds)")
    ev.add_argument("--split", default="test", help="held-out split of each source (default test)")
    ev.add_argument("--max-samples", type=int)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--output", help="write the metrics as JSON to this file")
    ev.add_argument("--baselines", help="baselines.json from `mmtl baselines`: also report Δm and per-task verdicts")
    ev.add_argument("--tolerance", type=float, default=0.02,
                    help="relative drop of a task's primary metric still counted as no regression (default 0.02)")
    ev.set_defaults(func=_cmd_eval)

    analyze = sub.add_parser("analyze", help="analyses of tasks and runs").add_subparsers(
        dest="analyze_command", required=True, metavar="ACTION")
    af = analyze.add_parser("affinity", help="short training that measures inter-task affinity by lookahead (TAG) "
                            "and recommends task groupings", epilog="overrides: dotted keys, e.g. train.steps=50")
    af.add_argument("--config", help="experiment YAML (default: the built-in quickstart experiment)")
    af.add_argument("--every", type=int, default=5, help="measure every N training steps (default 5)")
    af.add_argument("--lookahead-lr", type=float, default=0.01, help="SGD step of the lookahead update (default 0.01)")
    af.add_argument("--max-groups", type=int, help="recommend at most this many groups (models)")
    af.add_argument("--out", help="output directory (default: <output_dir>-affinity)")
    af.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    af.set_defaults(func=_cmd_affinity)

    bl = sub.add_parser("baselines", help="train one single-task model per task with the same budget; store their metrics",
                        epilog="overrides: dotted keys as for `mmtl train`; writes OUT/baselines.json and OUT/<task>/")
    bl.add_argument("--config", help="experiment YAML of the multi-task run (default: the built-in quickstart experiment)")
    bl.add_argument("--out", help="output directory (default: <output_dir>-baselines)")
    bl.add_argument("--resume", action="store_true",
                    help="continue in --out: skip the tasks already done, continue an interrupted task's training")
    bl.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    bl.set_defaults(func=_cmd_baselines)

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
    gen.add_argument("--max-length", type=int, help="most tokens to generate")
    gen.add_argument("--num-beams", type=int, help="beam size (1 = greedy)")
    gen.add_argument("--length-penalty", type=float, help="beam score length exponent")
    gen.add_argument("--sample", action="store_const", const=True, help="sample instead of searching")
    gen.add_argument("--temperature", type=float, help="sampling temperature")
    gen.add_argument("--top-k", type=int, help="sample from the k most likely tokens (0 = all)")
    gen.add_argument("--top-p", type=float, help="nucleus sampling mass")
    gen.add_argument("--no-repeat-ngram", type=int, help="forbid repeating n-grams of this size")
    gen.add_argument("--repetition-penalty", type=float, help="penalty on tokens already generated")
    gen.add_argument("--seed", type=int, help="sampling seed")
    rec = pr.add_argument_group("recognition")
    rec.add_argument("--top-k-tags", type=int, help="keep at most N tags (highest scores first)")
    rec.add_argument("--threshold", type=float, help="minimum tag score (default: the checkpoint's eval.threshold)")
    pr.set_defaults(func=_cmd_predict)

    sv = sub.add_parser("serve", help="serve a trained model over HTTP: JSON API at /v1/predict, web page at /",
                        epilog="endpoints: POST /v1/predict, GET /healthz, GET /v1/info, GET /openapi.json, GET /")
    sv.add_argument("--checkpoint", required=True, help="run or checkpoint directory")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    sv.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    sv.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    sv.add_argument("--max-batch", type=int, default=16, help="most requests batched into one forward pass")
    sv.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill (default 5)")
    sv.add_argument("--max-body-mb", type=float, default=10.0, help="largest request body in MiB (default 10)")
    sv.add_argument("--max-pixels", type=int, default=40_000_000, help="largest decoded image, in pixels")
    sv.add_argument("--max-text-chars", type=int, default=20_000, help="longest text, in characters")
    sv.add_argument("--max-beams", type=int, default=8, help="largest num_beams a request may ask for (at most 64)")
    sv.add_argument("--max-concurrency", type=int, default=256,
                    help="connections plus requests at once; more are answered 503 (default 256)")
    sv.add_argument("--read-timeout", type=float, default=30.0,
                    help="seconds a request's headers and body may take to arrive (default 30)")
    sv.add_argument("--workers", type=int, default=1,
                    help="processes serving the same port, each with its own copy of the model (default 1)")
    sv.set_defaults(func=_cmd_serve)

    model = sub.add_parser("model", help="inspect models").add_subparsers(dest="model_command", required=True, metavar="ACTION")
    info = model.add_parser("info", help="parameters per part (shared vs per task) and forward FLOPs per task",
                            description="Print the parameters of each model part (shared vs per task) and the "
                                        "forward FLOPs per task of the model a config builds.",
                            epilog="classes, label mode and vocabulary come from the config's data sets when they "
                                   "exist (classes from the sources that feed recognition); the note says which")
    info.add_argument("--config", help="experiment YAML (default: the built-in quickstart experiment)")
    info.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. model.preset=small")
    info.set_defaults(func=_cmd_model_info)

    ft = sub.add_parser("finetune", help="fine-tune a trained model for a new modality and/or a new task",
                        description="Add a modality encoder and/or task heads to a trained model, train them on the "
                                    "config's data, check the old tasks for regressions, and save only what is new.",
                        epilog="overrides: dotted keys, e.g. train.steps=200 finetune.align_weight=1.0 "
                               "model.modalities.audio.n_mels=64")
    ft.add_argument("--checkpoint", required=True, help="the trained run or checkpoint directory to start from")
    ft.add_argument("--config", help="experiment YAML: data, training, output_dir and the finetune section")
    ft.add_argument("--add-modality", action="append", metavar="NAME", help="a modality to add (e.g. depth, audio)")
    ft.add_argument("--add-task", action="append", metavar="NAME", help="a task head to add (e.g. counting)")
    ft.add_argument("--strategy", choices=["frozen", "lora", "full"],
                    help="frozen: train only new parts; lora: plus adapters on fusion and heads; full: everything, "
                         "old parts at finetune.old_lr_scale x the learning rate (default: the config's, frozen)")
    ft.add_argument("--align-weight", type=float, help="weight of the loss pulling the new modality toward its paired one")
    ft.add_argument("--resume", help="continue an interrupted fine-tuning: 'latest' or a checkpoint directory "
                                     "(pass --config OUTPUT_DIR/finetune.yaml, as the interrupted run says)")
    ft.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    ft.set_defaults(func=_cmd_finetune)

    qs = sub.add_parser("quickstart", help="synthesize data, train the tiny model on all tasks, evaluate, predict")
    qs.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=100")
    qs.set_defaults(func=_cmd_quickstart)
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
    func: Callable[[argparse.Namespace], int] = args.func
    try:
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


if __name__ == "__main__":
    sys.exit(main())
