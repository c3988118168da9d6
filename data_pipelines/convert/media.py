"""Preparing a record's files for its sample: the image as JPEG, depth maps as PNG, audio as it is.

Images are stored as JPEG under ``jpg``: source JPEGs that need no change (RGB, upright, small
enough) keep their original bytes; everything else (grayscale, CMYK, palette, alpha, EXIF-rotated,
PNG/WebP/...) is decoded, turned upright into RGB and re-encoded once. One image key keeps the
loader and the benchmarks simple, and photographs lose nothing visible at quality 90-95.
"""
from __future__ import annotations

import io
from pathlib import Path

from data_pipelines.convert.records import Record
from data_pipelines.modalities import store_input
from data_pipelines.transforms import CorruptSampleError, load_pixels, open_image, to_rgb

# (record, jpg bytes or None, re-encoded?, skip reason or None)
Prepared = tuple[Record, bytes | None, bool, str | None]


def prepare_image(data: bytes, resize_max: int, quality: int, max_pixels: int) -> tuple[bytes, bool]:
    """Image file bytes -> (JPEG bytes, re-encoded?): upright RGB, long side <= ``resize_max`` (0: any).

    Source JPEGs that are already RGB, upright and small enough keep their bytes. Raises
    :class:`CorruptSampleError`.
    """
    from PIL import Image, ImageOps

    image = open_image(data, max_pixels)
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001  unreadable EXIF: treat as upright
        orientation = 1
    shrink = bool(resize_max) and max(image.size) > resize_max
    if image.format == "JPEG" and image.mode == "RGB" and orientation in (1, None) and not shrink:
        load_pixels(image)  # fully decode once, so truncated files are caught here, not in training
        return data, False
    if shrink and image.format == "JPEG":
        image.draft("RGB", (resize_max, resize_max))  # DCT-domain downscale: far less work for big photos
    load_pixels(image)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001
        pass
    image = to_rgb(image)
    if shrink:
        image.thumbnail((resize_max, resize_max), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), True


def process(job: tuple[Record, int, int, int]) -> Prepared:
    """Pool worker: read and prepare one record's image; returns (record, jpg, re-encoded, skip reason)."""
    record, resize_max, quality, max_pixels = job
    if record.image_path is None and record.image_bytes is None:
        return _with_extras(record, None, False)
    try:
        data = record.image_bytes if record.image_bytes is not None else Path(record.image_path).read_bytes()
    except OSError:
        return record, None, False, "missing_image_file"
    try:
        jpg, reencoded = prepare_image(data, resize_max, quality, max_pixels)
    except CorruptSampleError as exc:
        return record, None, False, exc.reason
    return _with_extras(record, jpg, reencoded)


def _with_extras(record: Record, jpg: bytes | None, reencoded: bool) -> Prepared:
    """Read and check the record's further modality files (a bad one skips the record, like a bad image)."""
    for name, path in record.extra_paths.items():
        try:
            key, data = store_input(name, path)
        except OSError:
            return record, None, False, f"missing_{name}_file"
        except CorruptSampleError as exc:
            return record, None, False, exc.reason
        record.extra_data[key] = data
    return record, jpg, reencoded, None
