"""``mmtl data inspect``: what a shard directory holds, and which samples the loader would skip."""
from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import webdataset as wds

from data_pipelines.sample import IMAGE_KEYS, supervised_tasks
from data_pipelines.shards import read_dataset_info, split_shards
from data_pipelines.transforms import DEFAULT_MAX_PIXELS, CorruptSampleError, load_pixels, open_image, parse_annotation
from mmtl.errors import MMTLError

# corrupt samples listed one by one in the report (the counts cover all of them)
MAX_LISTED_CORRUPT = 200
_CHECK_DRAFT = 64  # decode JPEGs at a reduced scale: truncation still shows, at a fraction of the cost


def describe(values: list[float]) -> dict[str, float]:
    """count / min / mean / median / max of ``values`` (zeros when empty)."""
    if not values:
        return {"count": 0, "min": 0, "mean": 0.0, "median": 0.0, "max": 0}
    return {"count": len(values), "min": min(values), "mean": round(statistics.fmean(values), 2),
            "median": statistics.median(values), "max": max(values)}


def iter_raw(url: str, errors: list[dict[str, str]]) -> Iterator[dict[str, Any]]:
    """Raw samples of one shard; unreadable tar data is recorded in ``errors`` instead of raising."""
    def handler(exc: Exception) -> bool:
        errors.append({"shard": Path(url).name, "key": "?", "reason": "unreadable_shard", "detail": str(exc)})
        return True

    yield from wds.WebDataset(url, shardshuffle=False, empty_check=False, handler=handler, nodesplitter=None,
                               workersplitter=None)


def check_sample(raw: dict[str, Any], max_pixels: int) -> tuple[dict[str, Any], tuple[int, int] | None]:
    """(annotation, image size or None) of a raw sample; raises :class:`CorruptSampleError` like the loader."""
    annotation = parse_annotation(raw.get("json"))
    image_key = next((k for k in IMAGE_KEYS if k in raw), None)
    if image_key is None:
        return annotation, None
    image = open_image(raw[image_key], max_pixels)
    size = image.size
    if image.format == "JPEG":
        image.draft("RGB", (_CHECK_DRAFT, _CHECK_DRAFT))
    load_pixels(image)
    return annotation, size


def inspect_split(path: str | Path, split: str, limit: int, max_pixels: int) -> tuple[dict[str, Any], list[dict]]:
    """Statistics of one split and its corrupt samples."""
    tasks: Counter = Counter()
    classes: Counter = Counter()
    reasons: Counter = Counter()
    words: dict[str, list[int]] = {"captions": [], "document": [], "summaries": []}
    widths: list[int] = []
    heights: list[int] = []
    corrupt: list[dict[str, str]] = []
    good = text_only = seen = 0
    for url in split_shards(path, split):
        shard_errors: list[dict[str, str]] = []
        for raw in iter_raw(url, shard_errors):
            seen += 1
            try:
                annotation, size = check_sample(raw, max_pixels)
            except CorruptSampleError as exc:
                reasons[exc.reason] += 1
                corrupt.append({"split": split, "shard": Path(url).name, "key": str(raw.get("__key__", "?")),
                                "reason": exc.reason, "detail": exc.detail})
                continue
            good += 1
            tasks.update(supervised_tasks(annotation))
            classes.update(str(label) for label in annotation.get("labels", []))
            for caption in annotation.get("captions", []):
                words["captions"].append(len(caption.split()))
            for summary in annotation.get("summaries", []):
                words["summaries"].append(len(summary.split()))
            if annotation.get("document"):
                words["document"].append(len(annotation["document"].split()))
            if size is None:
                text_only += 1
            else:
                widths.append(size[0])
                heights.append(size[1])
            if limit and seen >= limit:
                break
        for error in shard_errors:
            reasons[error["reason"]] += 1
            corrupt.append({"split": split, **error})
        if limit and seen >= limit:
            break
    stats = {
        "samples": good, "corrupt": sum(reasons.values()), "corrupt_by_reason": dict(reasons.most_common()),
        "tasks": dict(tasks), "with_image": len(widths), "text_only": text_only,
        "class_histogram": dict(classes.most_common()),
        "caption_words": describe(words["captions"]), "document_words": describe(words["document"]),
        "summary_words": describe(words["summaries"]),
        "image_width": describe(widths), "image_height": describe(heights),
    }
    return stats, corrupt


def inspect_shards(path: str | Path, splits: list[str] | None = None, limit: int = 0,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """Read every sample of ``splits`` (default: all) and report counts, histograms, lengths, sizes, corrupt samples."""
    if limit < 0:
        raise MMTLError(f"--limit must be >= 0, got {limit}")
    info = read_dataset_info(path)
    names = splits or list(info.get("splits", {}))
    unknown = [s for s in names if s not in info.get("splits", {})]
    if unknown:
        raise MMTLError(f"split(s) {', '.join(unknown)} not in {path}; available: {', '.join(info['splits'])}")
    report: dict[str, Any] = {"path": str(path), "name": info.get("name"), "label_mode": info.get("label_mode", "multi"),
                              "classes": len(info.get("classes", [])), "splits": {}, "corrupt_samples": []}
    for split in names:
        stats, corrupt = inspect_split(path, split, limit, max_pixels)
        report["splits"][split] = stats
        report["corrupt_samples"].extend(corrupt[: max(0, MAX_LISTED_CORRUPT - len(report["corrupt_samples"]))])
    return report


def _fmt_stats(stats: dict[str, float]) -> str:
    if not stats["count"]:
        return "-"
    return f"n={stats['count']} min={stats['min']} mean={stats['mean']} median={stats['median']} max={stats['max']}"


def format_report(report: dict[str, Any], top_classes: int = 20) -> str:
    """The report as readable text."""
    lines = [f"{report['path']}: {report['name']} ({report['classes']} classes, label_mode {report['label_mode']})"]
    for split, s in report["splits"].items():
        tasks = ", ".join(f"{t}={n}" for t, n in s["tasks"].items()) or "none"
        lines += [
            f"\n[{split}] {s['samples']} good samples ({s['with_image']} with image, {s['text_only']} text only), "
            f"{s['corrupt']} corrupt",
            f"  tasks: {tasks}",
            f"  caption words:  {_fmt_stats(s['caption_words'])}",
            f"  document words: {_fmt_stats(s['document_words'])}",
            f"  summary words:  {_fmt_stats(s['summary_words'])}",
            f"  image width:    {_fmt_stats(s['image_width'])}",
            f"  image height:   {_fmt_stats(s['image_height'])}",
        ]
        if s["corrupt_by_reason"]:
            lines.append("  corrupt by reason: " + ", ".join(f"{r}={n}" for r, n in s["corrupt_by_reason"].items()))
        histogram = list(s["class_histogram"].items())
        if histogram:
            lines.append(f"  classes ({len(histogram)} seen, top {min(top_classes, len(histogram))}):")
            width = max(len(name) for name, _ in histogram[:top_classes])
            peak = histogram[0][1]
            for name, count in histogram[:top_classes]:
                lines.append(f"    {name:<{width}} {count:>6} {'#' * max(1, round(30 * count / peak))}")
    if report["corrupt_samples"]:
        lines.append("\ncorrupt samples:")
        lines.extend(f"  {c['split']}/{c['shard']} {c['key']}: {c['reason']} ({c['detail']})"
                     for c in report["corrupt_samples"])
    return "\n".join(lines)
