"""``mmtl data inspect``: what a shard set holds, and which samples the loader would skip.

Works on mmtl's shard directories and on shards without a ``dataset.json`` (a directory of tars,
one tar, a brace pattern, a ``pipe:``; mapped with ``--map``). Besides counts it warns when the
shards look sorted by label (blocks of one class starve the shuffle buffer) and counts the
documents a text context of ``context_length`` tokens would cut.
"""
from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from data_pipelines import shardsets
from data_pipelines.fieldmap import Mapping
from data_pipelines.fields import AnnotationField
from data_pipelines.profile import KEEP_WHOLE_SHARES, context_keeping
from data_pipelines.sample import IMAGE_KEYS, TEXT_INPUT_FIELD, annotation_fields, class_tasks, supervised_tasks
from data_pipelines.shards import as_mapping, is_native, read_dataset_info, split_shards
from data_pipelines.transforms import DEFAULT_MAX_PIXELS, CorruptSampleError, load_pixels, open_image, parse_annotation
from mmtl.config import MODEL_PRESETS
from mmtl.errors import MMTLError
from mmtl.text import bpe_encode

# the text context the default (tiny) preset reads: a longer document is cut
DEFAULT_CONTEXT_LENGTH = int(MODEL_PRESETS["tiny"]["text"]["context_length"])
# shards look sorted when same-label neighbours exceed the shuffled expectation by this share of the gap to 1
SORTED_EXCESS = 0.5
MIN_PAIRS_FOR_ORDER = 20

# corrupt samples listed one by one in the report (the counts cover all of them)
MAX_LISTED_CORRUPT = 200
_CHECK_DRAFT = 64  # decode JPEGs at a reduced scale: truncation still shows, at a fraction of the cost


def describe(values: list[float]) -> dict[str, float]:
    """count / min / mean / median / max of ``values`` (zeros when empty)."""
    if not values:
        return {"count": 0, "min": 0, "mean": 0.0, "median": 0.0, "max": 0}
    return {"count": len(values), "min": min(values), "mean": round(statistics.fmean(values), 2),
            "median": statistics.median(values), "max": max(values)}


def iter_raw(url: str, errors: list[dict[str, str]], mapping: Mapping | None = None) -> Iterator[dict[str, Any]]:
    """Raw samples of one shard (in the contract via ``mapping`` when it has no dataset.json); unreadable
    tar data is recorded in ``errors`` instead of raising."""
    def handler(exc: Exception) -> bool:
        errors.append({"shard": Path(url).name, "key": "?", "reason": "unreadable_shard", "detail": str(exc)})
        return True

    yield from shardsets.contract_samples([url], mapping, handler)


@dataclass
class TextLengths:
    """Documents counted against a text context of ``context_length`` BPE tokens."""

    context_length: int
    lengths: list[int] = field(default_factory=list)

    def add(self, document: str) -> None:
        self.lengths.append(len(bpe_encode(document)))

    def to_dict(self) -> dict[str, Any]:
        """Counts against the context, and the context that keeps each share of ALL documents whole."""
        keep = {f"{share:.0%}": context_keeping(self.lengths, share) for share in KEEP_WHOLE_SHARES}
        return {"context_length": self.context_length, "documents": len(self.lengths),
                "cut": sum(n > self.context_length for n in self.lengths),
                "longest_tokens": max(self.lengths, default=0), "context_to_keep_whole": keep}


def label_order(shard_labels: Sequence[Sequence[str]]) -> dict[str, Any]:
    """How often neighbours in a shard share their first label, against what a shuffled order gives."""
    pairs = same = 0
    counts: Counter = Counter()
    for labels in shard_labels:
        counts.update(labels)
        pairs += max(len(labels) - 1, 0)
        same += sum(a == b for a, b in zip(labels, labels[1:]))
    total = sum(counts.values())
    expected = sum((n / total) ** 2 for n in counts.values()) if total else 0.0
    observed = same / pairs if pairs else 0.0
    looks_sorted = pairs >= MIN_PAIRS_FOR_ORDER and expected < 1 and (observed - expected) / (1 - expected) > SORTED_EXCESS
    return {"same_label_neighbours": round(observed, 3), "if_shuffled": round(expected, 3), "looks_sorted": looks_sorted}


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


@dataclass
class SplitTally:
    """What :func:`inspect_split` counts in one split, sample by sample."""

    split: str
    lengths: TextLengths
    # the annotation fields whose texts are counted in words (``AnnotationField.words``), and those of class names
    word_fields: tuple[AnnotationField, ...] = ()
    class_fields: tuple[str, ...] = ()
    tasks: Counter = field(default_factory=Counter)
    classes: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    corrupt: list[dict[str, str]] = field(default_factory=list)
    words: dict[str, list[int]] = field(default_factory=dict)
    widths: list[int] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)
    shard_labels: list[list[str]] = field(default_factory=list)
    good: int = 0
    text_only: int = 0

    def __post_init__(self) -> None:
        self.words = {spec.words: [] for spec in self.word_fields}

    def add(self, annotation: dict[str, Any], size: tuple[int, int] | None) -> None:
        """Count one good sample (``size``: its image's, None without an image)."""
        self.good += 1
        self.tasks.update(supervised_tasks(annotation))
        names = [str(label) for name in self.class_fields for label in annotation.get(name, [])]
        self.classes.update(names)
        if names:
            self.shard_labels[-1].append(names[0])
        if annotation.get(TEXT_INPUT_FIELD):
            self.lengths.add(annotation[TEXT_INPUT_FIELD])
        for spec in self.word_fields:
            value = annotation.get(spec.name)
            texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
            self.words[spec.words] += [len(str(text).split()) for text in texts if text]
        if size is None:
            self.text_only += 1
        else:
            self.widths.append(size[0])
            self.heights.append(size[1])

    def add_corrupt(self, error: dict[str, str]) -> None:
        """Count one corrupt sample or unreadable shard (``shard``, ``key``, ``reason``, ``detail``)."""
        self.reasons[error["reason"]] += 1
        self.corrupt.append({"split": self.split, **error})

    def stats(self) -> dict[str, Any]:
        """The split's entry of the report."""
        return {
            "samples": self.good, "corrupt": sum(self.reasons.values()),
            "corrupt_by_reason": dict(self.reasons.most_common()), "tasks": dict(self.tasks),
            "with_image": len(self.widths), "text_only": self.text_only,
            "class_histogram": dict(self.classes.most_common()),
            **{key: describe(values) for key, values in self.words.items()},
            "image_width": describe(self.widths), "image_height": describe(self.heights),
            "document_tokens": self.lengths.to_dict(), "label_order": label_order(self.shard_labels),
        }


def inspect_split(path: str | Path, split: str, limit: int, max_pixels: int, mapping: Mapping | None = None,
                  context_length: int = DEFAULT_CONTEXT_LENGTH) -> tuple[dict[str, Any], list[dict]]:
    """Statistics of one split and its corrupt samples."""
    fields = annotation_fields()
    tally = SplitTally(split, TextLengths(context_length), tuple(f for f in fields if f.words),
                       tuple(f.name for f in fields if f.kind.holds_classes))
    seen = 0
    for url in split_shards(path, split):
        shard_errors: list[dict[str, str]] = []
        tally.shard_labels.append([])
        for raw in iter_raw(url, shard_errors, mapping):
            seen += 1
            try:
                tally.add(*check_sample(raw, max_pixels))
            except CorruptSampleError as exc:
                tally.add_corrupt({"shard": Path(url).name, "key": str(raw.get("__key__", "?")),
                                   "reason": exc.reason, "detail": exc.detail})
            if limit and seen >= limit:
                break
        for error in shard_errors:
            tally.add_corrupt(error)
        if limit and seen >= limit:
            break
    return tally.stats(), tally.corrupt


def inspect_shards(path: str | Path, splits: list[str] | None = None, limit: int = 0,
                   max_pixels: int = DEFAULT_MAX_PIXELS, mapping: Sequence[str] = (),
                   context_length: int = DEFAULT_CONTEXT_LENGTH) -> dict[str, Any]:
    """Read every sample of ``splits`` (default: all) and report counts, histograms, lengths, sizes, corrupt
    samples, documents longer than ``context_length`` tokens, and whether the shards look sorted by label."""
    if limit < 0 or context_length < 1:
        raise MMTLError(f"--limit must be >= 0 and --context-length >= 1, got {limit} and {context_length}")
    if is_native(path):
        info, parsed = read_dataset_info(path), None
        available = list(info.get("splits", {}))
    else:  # no scan first: this reads every sample anyway
        shards, parsed = shardsets.resolve(path), as_mapping(mapping)
        info = {"name": shards.name, "classes": None, "label_mode": None}
        available = list(shards.splits)
    names = splits or available
    unknown = [s for s in names if s not in available and not (parsed is not None and shards.any_split)]
    if unknown:
        raise MMTLError(f"split(s) {', '.join(unknown)} not in {path}; available: {', '.join(available)}")
    report: dict[str, Any] = {"path": str(path), "name": info.get("name"), "label_mode": info.get("label_mode", "multi"),
                              "classes": len(info.get("classes") or []), "splits": {}, "corrupt_samples": [],
                              "dataset_json": parsed is None, "warnings": []}
    seen_classes: set[str] = set()
    for split in names:
        stats, corrupt = inspect_split(path, split, limit, max_pixels, parsed, context_length)
        report["splits"][split] = stats
        report["corrupt_samples"].extend(corrupt[: max(0, MAX_LISTED_CORRUPT - len(report["corrupt_samples"]))])
        report["warnings"].extend(split_warnings(split, stats))
        seen_classes.update(stats["class_histogram"])
    if parsed is not None:  # what the scan would write into a dataset.json
        report["classes"] = len(seen_classes)
        labelled = class_tasks()  # single-label when each labelled sample adds exactly one label to the histogram
        single = all(sum(s["tasks"].get(t, 0) for t in labelled) == sum(s["class_histogram"].values())
                     for s in report["splits"].values())
        report["label_mode"] = "single" if seen_classes and single else "multi"
    return report


def split_warnings(split: str, stats: dict[str, Any]) -> list[str]:
    """Warnings for one split: shards sorted by label, documents cut by the text context."""
    warnings = []
    order = stats["label_order"]
    if order["looks_sorted"]:
        warnings.append(f"[{split}] the shards look sorted by label: {order['same_label_neighbours']:.0%} of neighbouring "
                        f"samples share their label (about {order['if_shuffled']:.0%} if shuffled); rewrite them with "
                        f"`mmtl data convert` (which mixes samples across shards) or raise data.shuffle_buffer")
    tokens = stats["document_tokens"]
    if tokens["cut"]:
        warnings.append(f"[{split}] {tokens['cut']} of {tokens['documents']} documents "
                        f"({tokens['cut'] / tokens['documents']:.0%}) are longer than a text context of "
                        f"{tokens['context_length']} tokens (longest {tokens['longest_tokens']}) and would be cut; "
                        f"{_raise_advice(tokens)}")
    return warnings


def _raise_advice(tokens: dict[str, Any]) -> str:
    """Which model.text.context_length reads which share of ALL documents whole, for the lengths above the
    inspected context."""
    longer = [f"{length} keeps {share}" for share, length in tokens.get("context_to_keep_whole", {}).items()
              if length > tokens["context_length"]]
    return f"model.text.context_length={', '.join(longer)} of all documents whole" if longer else \
        "raise model.text.context_length to keep more"


def _fmt_stats(stats: dict[str, float]) -> str:
    if not stats["count"]:
        return "-"
    return f"n={stats['count']} min={stats['min']} mean={stats['mean']} median={stats['median']} max={stats['max']}"


def _keep_whole_line(tokens: dict[str, Any]) -> list[str]:
    """The report line naming the context lengths that keep shares of all documents whole (none without them)."""
    keep = tokens.get("context_to_keep_whole") or {}
    if not tokens["documents"] or not keep:
        return []
    return ["  context length keeping documents whole: "
            + ", ".join(f"{share} -> {length}" for share, length in keep.items()) + " tokens"]


def format_report(report: dict[str, Any], top_classes: int = 20) -> str:
    """The report as readable text."""
    source = "" if report.get("dataset_json", True) else ", no dataset.json: read as mapped"
    word_keys = [f.words for f in annotation_fields() if f.words]
    lines = [f"{report['path']}: {report['name']} ({report['classes']} classes, label_mode {report['label_mode']}{source})"]
    for split, s in report["splits"].items():
        tasks = ", ".join(f"{t}={n}" for t, n in s["tasks"].items()) or "none"
        lines += [
            f"\n[{split}] {s['samples']} good samples ({s['with_image']} with image, {s['text_only']} text only), "
            f"{s['corrupt']} corrupt",
            f"  tasks: {tasks}",
            *(f"  {key.replace('_', ' ') + ':':<16}{_fmt_stats(s[key])}" for key in word_keys if key in s),
            f"  documents over {s['document_tokens']['context_length']} tokens: {s['document_tokens']['cut']} of "
            f"{s['document_tokens']['documents']}",
            *_keep_whole_line(s["document_tokens"]),
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
    if report.get("warnings"):
        lines.append("")
        lines.extend(f"warning: {w}" for w in report["warnings"])
    if report["corrupt_samples"]:
        lines.append("\ncorrupt samples:")
        lines.extend(f"  {c['split']}/{c['shard']} {c['key']}: {c['reason']} ({c['detail']})"
                     for c in report["corrupt_samples"])
    return "\n".join(lines)
