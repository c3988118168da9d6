"""Decoding the parts of a raw sample (image bytes, ``json`` annotations) with named failure reasons.

Images leave as uint8 tensors (normalisation happens on the device). Every way a sample can be
unusable raises :class:`CorruptSampleError` with one of :data:`CORRUPT_REASONS`, so the loader,
``mmtl data inspect`` and the converters count the same reasons.
"""
from __future__ import annotations

import hashlib
import io
import json
import warnings
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from data_pipelines.cachebudget import CacheBudget
from data_pipelines.sample import IMAGE_SUFFIXES  # noqa: F401  (batch prediction over a folder reads it here)

# A decoded image larger than this is treated as a decompression bomb (about 8000 x 8000 pixels).
DEFAULT_MAX_PIXELS = 64_000_000

CORRUPT_REASONS = (
    "undecodable_image", "truncated_image", "decompression_bomb", "missing_json", "malformed_json",
    "empty_text", "invalid_annotation", "undecodable_audio",
)

# annotation field -> whether it holds a list of strings (else one string)
_TEXT_FIELD_IS_LIST = {"captions": True, "summaries": True, "document": False}


class CorruptSampleError(ValueError):
    """A sample that cannot be used; ``reason`` is one of :data:`CORRUPT_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open image bytes lazily (header only), refusing unreadable headers and decompression bombs."""
    try:
        with warnings.catch_warnings():
            # our own pixel limit decides; PIL's global warning would fire first for large limits
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise CorruptSampleError("decompression_bomb", str(exc)) from None
    except UnidentifiedImageError:
        raise CorruptSampleError("undecodable_image", "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _image_error(exc) from None
    width, height = image.size
    if width * height > max_pixels:
        raise CorruptSampleError("decompression_bomb", f"{width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    return image


def load_pixels(image: Image.Image) -> Image.Image:
    """Decode the pixels of a lazily opened image, classifying truncated and broken streams."""
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _image_error(exc) from None
    return image


def _image_error(exc: Exception) -> CorruptSampleError:
    """Classify a PIL decoding error: a stream that ends early is ``truncated_image``."""
    message = str(exc) or type(exc).__name__
    truncated = isinstance(exc, EOFError) or "truncated" in message.lower()
    return CorruptSampleError("truncated_image" if truncated else "undecodable_image", message)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparent pixels become white instead of PIL's black default."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit / float greyscale: scale to 8 bits instead of clipping at 255
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() or 1.0
        image = Image.fromarray((array * (255.0 / peak)).clip(0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft: int = 0) -> Image.Image:
    """Decode image bytes to an RGB PIL image with EXIF orientation applied.

    ``draft``: let JPEG decode at a reduced scale whose sides stay >= ``draft`` (much faster for
    large photos that are resized afterwards). Raises :class:`CorruptSampleError`.
    """
    image = open_image(data, max_pixels)
    if draft and image.format == "JPEG":
        image.draft("RGB", (draft, draft))
    image = load_pixels(image)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001  a broken EXIF block must not lose a good image
        pass
    return to_rgb(image)


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (keeping aspect) and crop the centre square."""
    if image.size == (size, size):
        return image
    return ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """HWC PIL image -> CHW uint8 tensor (normalisation happens later, on the device)."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def image_tensor(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Bytes -> decoded, resized, CHW uint8 tensor of shape (3, size, size)."""
    return to_uint8_tensor(resize_center_crop(decode_image(data, max_pixels, draft=size), size))


class DecodedImageCache:
    """Decoded images by the hash of their bytes: a training set that fits in ``budget`` bytes is decoded
    once, not once per epoch (decoding is deterministic, so batches are the same with the cache or without).

    A stream that does not fit is not cached at all: the first image past the budget empties the cache
    and turns it off (:class:`CacheBudget`), so a large data set pins no memory for a few hits. ``budget`` 0: off.
    """

    def __init__(self, budget: int) -> None:
        self.budget = CacheBudget(budget)
        self.images: dict[bytes, torch.Tensor] = {}

    def image(self, data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
        """:func:`image_tensor` of ``data``, from the cache when these bytes were decoded before (the same
        tensor: callers copy it, never write to it)."""
        if not self.budget.on:
            return image_tensor(data, size, max_pixels)
        key = hashlib.blake2b(data, digest_size=16).digest() + size.to_bytes(4, "little")
        image = self.images.get(key)
        if image is None:
            image = image_tensor(data, size, max_pixels)
            if self.budget.claim(image.numel() * image.element_size()):
                self.images[key] = image
            else:  # the data set does not fit: stop caching and free what is held
                self.images.clear()
        return image


def parse_annotation(data: bytes | str | None) -> dict[str, Any]:
    """``json`` bytes -> a checked annotation dict; blank strings are dropped from text fields.

    Raises :class:`CorruptSampleError`: ``missing_json``, ``malformed_json`` (not JSON, not an
    object, or a field of the wrong type) or ``empty_text`` (a text field that holds only blanks).
    """
    if data is None:
        raise CorruptSampleError("missing_json", "sample has no json annotations")
    try:
        annotation = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptSampleError("malformed_json", str(exc)) from None
    if not isinstance(annotation, dict):
        raise CorruptSampleError("malformed_json", f"json is a {type(annotation).__name__}, not an object")
    labels = annotation.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(v, (str, int)) for v in labels)):
        raise CorruptSampleError("malformed_json", "'labels' must be a list of class names or ids")
    for name, is_list in _TEXT_FIELD_IS_LIST.items():
        if name not in annotation:
            continue
        value = annotation[name]
        if is_list:
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise CorruptSampleError("malformed_json", f"{name!r} must be a list of strings")
            kept = [v for v in value if v.strip()]
            if value and not kept:
                raise CorruptSampleError("empty_text", f"every entry of {name!r} is blank")
            annotation[name] = kept
        else:
            if not isinstance(value, str):
                raise CorruptSampleError("malformed_json", f"{name!r} must be a string")
            if not value.strip():
                raise CorruptSampleError("empty_text", f"{name!r} is blank")
    return annotation
