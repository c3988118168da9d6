"""``mmtl data preview``: a contact sheet of samples with their tags and first caption (or document)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps

from data_pipelines import shardsets
from data_pipelines.fieldmap import Mapping
from data_pipelines.inspect import iter_raw
from data_pipelines.sample import IMAGE_KEYS
from data_pipelines.shards import as_mapping, is_native, read_dataset_info, split_shards
from data_pipelines.transforms import CorruptSampleError, decode_image, parse_annotation
from mmtl.errors import MMTLError

THUMB = 192  # thumbnail side in pixels
TEXT_LINES = 6  # lines of text under each thumbnail
FONT_SIZE = 12
PAD = 6
BACKGROUND = (255, 255, 255)
PLACEHOLDER = (225, 225, 225)
ERROR_FILL = (250, 210, 210)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # PIL's bundled scalable font (needs FreeType)
    except (OSError, TypeError, ValueError):
        return ImageFont.load_default()


def wrap(text: str, font: Any, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; long words are cut, the last line ends in '...' when text remains."""
    lines: list[str] = []
    current = ""
    words = text.split()
    for index, word in enumerate(words):
        candidate = f"{current} {word}".strip()
        if font.getlength(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = word
        while font.getlength(current) > width and len(current) > 1:
            current = current[:-1]
        if len(lines) == max_lines:
            break
    if current and len(lines) < max_lines:
        lines.append(current)
    consumed = " ".join(lines).split()
    if len(consumed) < len(words) and lines:
        last = lines[-1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        lines[-1] = last + "..."
    return lines[:max_lines]


def _tile(raw: dict[str, Any], font: Any, line_height: int) -> Image.Image:
    """One thumbnail with its key, tags and first caption (or document) under it."""
    tile = Image.new("RGB", (THUMB, THUMB + line_height * TEXT_LINES + PAD), BACKGROUND)
    draw = ImageDraw.Draw(tile)
    key = str(raw.get("__key__", "?"))
    text_lines = [key]
    try:
        annotation = parse_annotation(raw.get("json"))
    except CorruptSampleError as exc:
        annotation, text_lines = {}, [key, f"corrupt json: {exc.reason}"]
    image_key = next((k for k in IMAGE_KEYS if k in raw), None)
    if image_key is None:
        draw.rectangle([0, 0, THUMB - 1, THUMB - 1], fill=PLACEHOLDER)
        draw.text((PAD, THUMB // 2 - line_height), "text only", fill=(90, 90, 90), font=font)
    else:
        try:
            image = decode_image(raw[image_key], draft=THUMB)
            image = ImageOps.contain(image, (THUMB, THUMB), Image.Resampling.BICUBIC)  # small images grow too
            tile.paste(image, ((THUMB - image.width) // 2, (THUMB - image.height) // 2))
        except CorruptSampleError as exc:
            draw.rectangle([0, 0, THUMB - 1, THUMB - 1], fill=ERROR_FILL)
            for row, line in enumerate(wrap(f"corrupt image: {exc.reason}", font, THUMB - 2 * PAD, 3)):
                draw.text((PAD, THUMB // 2 - line_height + row * line_height), line, fill=(150, 0, 0), font=font)
    width = THUMB - 2 * PAD
    labels = annotation.get("labels") or []
    if labels:
        text_lines += wrap("tags: " + ", ".join(str(label) for label in labels), font, width, 2)
    caption = (annotation.get("captions") or [None])[0]
    body = f"\u201c{caption}\u201d" if caption else annotation.get("document") or ""
    if annotation.get("summaries") and not caption:
        body = f"summary: {annotation['summaries'][0]}"
    if body:
        text_lines += wrap(body, font, width, TEXT_LINES - len(text_lines))
    for row, line in enumerate(text_lines[:TEXT_LINES]):
        colour = (30, 30, 30) if row else (110, 110, 110)
        draw.text((PAD, THUMB + PAD // 2 + row * line_height), line, fill=colour, font=font)
    return tile


def _first_samples(path: str | Path, split: str, num: int, mapping: Mapping | None) -> list[dict[str, Any]]:
    """Up to ``num`` raw samples from the start of ``split`` (unreadable ones are passed over)."""
    raws: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    for url in split_shards(path, split):
        for raw in iter_raw(url, errors, mapping):
            raws.append(raw)
            if len(raws) == num:
                return raws
    return raws


def contact_sheet(path: str | Path, out: str | Path, num: int = 16, split: str | None = None,
                  columns: int = 0, mapping: Sequence[str] = ()) -> Path:
    """Draw the first ``num`` samples of ``split`` (default: the first split) as a grid into ``out``
    (shards without dataset.json are read through ``mapping``)."""
    if num < 1:
        raise MMTLError(f"--num must be >= 1, got {num}")
    out = Path(out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise MMTLError(f"--out must end in .png or .jpg, got {out.name}")
    if is_native(path):
        info, parsed = read_dataset_info(path), None
    else:  # no scan: only the first samples are read
        shards, parsed = shardsets.resolve(path), as_mapping(mapping)
        info = {"name": shards.name, "splits": shards.splits}
    split = split or next(iter(info.get("splits", {})), None)
    if split is None:
        raise MMTLError(f"{path} has no splits")
    raws = _first_samples(path, split, num, parsed)
    if not raws:
        raise MMTLError(f"split {split!r} of {path} has no readable samples")
    font = _font(FONT_SIZE)
    line_height = FONT_SIZE + 4
    tiles = [_tile(raw, font, line_height) for raw in raws]
    cols = columns if columns > 0 else math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    tile_w, tile_h = tiles[0].size
    header = line_height + 2 * PAD
    sheet = Image.new("RGB", (cols * (tile_w + PAD) + PAD, header + rows * (tile_h + PAD) + PAD), (240, 240, 240))
    ImageDraw.Draw(sheet).text((PAD, PAD), f"{info.get('name', Path(path).name)} / {split}: "
                               f"first {len(tiles)} samples", fill=(0, 0, 0), font=font)
    for index, tile in enumerate(tiles):
        r, c = divmod(index, cols)
        sheet.paste(tile, (PAD + c * (tile_w + PAD), header + r * (tile_h + PAD)))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
