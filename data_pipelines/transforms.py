"""Image decoding and resizing in the loader workers; images leave as uint8 tensors."""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageOps


def decode_image(data: bytes) -> Image.Image:
    """Decode image bytes to an RGB PIL image, applying EXIF orientation (raises on corrupt data)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    image = ImageOps.exif_transpose(image)
    return image.convert("RGB")


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (keeping aspect) and crop the centre square."""
    if image.size == (size, size):
        return image
    return ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """HWC PIL image -> CHW uint8 tensor (normalisation happens later, on the device)."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def image_tensor(data: bytes, size: int) -> torch.Tensor:
    """Bytes -> decoded, resized, CHW uint8 tensor of shape (3, size, size)."""
    return to_uint8_tensor(resize_center_crop(decode_image(data), size))
