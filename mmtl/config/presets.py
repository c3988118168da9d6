"""Model presets: each is only a set of ``model`` overrides; the generic builder does the rest."""
from __future__ import annotations

from typing import Any


def _resnet(channels: list[int], layers: list[int], output_stride: int = 16) -> dict:
    """timm ResNet knobs for small presets: a slim ResNet whose later stages keep ``output_stride``.

    A CNN learns shapes from a few thousand images far faster than a ViT trained from scratch
    (measured in docs/benchmarks.md). At 64 pixels an object of 11 pixels is under 3 pixels wide
    after the stem; keeping stride 8 in the last two stages (dilated) is what lets the network tell
    a circle from a square within a few hundred steps (recognition F1 0.70 -> 0.99 for a plain
    classifier on shapes world, docs/benchmarks.md).
    """
    return {"layers": layers, "channels": channels, "stem_width": channels[0], "output_stride": output_stride}


# A preset is only a set of model overrides; the generic builder does the rest.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "micro": {
        "width": 32, "num_heads": 2,
        "image": {"timm_model": "resnet18", "image_size": 32, "timm_kwargs": _resnet([8, 16, 32, 32], [1, 1, 1, 1])},
        "text": {"depth": 1, "context_length": 64},
        "fusion": {"depth": 1}, "decoder": {"depth": 1},
    },
    # small images (32 px): a 16-32-64-64 ResNet at stride 8 (a 4x4 map, 16 tokens) whose step alone costs about
    # a 2-convolution CNN's, narrow, one fusion layer; chosen by time-to-accuracy against that CNN: a whole step
    # ~1.7x the CNN's CPU, a third of tiny's (docs/benchmarks.md, "a preset for small images")
    "nano": {
        "width": 64, "num_heads": 2,
        "image": {"timm_model": "resnet18", "image_size": 32,
                  "timm_kwargs": _resnet([16, 32, 64, 64], [1, 1, 1, 1], output_stride=8)},
        "text": {"depth": 1, "context_length": 64},
        "fusion": {"depth": 1}, "decoder": {"depth": 1},
    },
    "tiny": {
        "width": 128, "num_heads": 4,
        # stride 8 for shapes; the 8x8 feature map is pooled to 4x4 tokens, which keeps the fusion as cheap as
        # before, and a 128-channel last stage keeps the dilated stages as cheap as the old stride-16 ResNet
        "image": {"timm_model": "resnet18", "image_size": 64, "feature_pool": 2,
                  "timm_kwargs": _resnet([32, 64, 128, 128], [1, 1, 1, 1], output_stride=8)},
        "text": {"depth": 1, "context_length": 128},
        "fusion": {"depth": 2}, "decoder": {"depth": 2},
    },
    "small": {
        "width": 256, "num_heads": 8,
        "image": {"timm_model": "resnet18", "image_size": 64, "timm_kwargs": _resnet([64, 128, 256, 512], [2, 2, 2, 2])},
        "text": {"depth": 4, "context_length": 320},
        "fusion": {"depth": 4}, "decoder": {"depth": 4},
    },
    # for GPUs: a ViT-B/16-class image encoder (timm vit_base_patch16_224 at 224 px, 196 tokens),
    # a 12-layer text encoder with room for documents, deeper fusion and decoders
    "base": {
        "width": 768, "num_heads": 12,
        "image": {"timm_model": "vit_base_patch16_224", "image_size": 224, "timm_kwargs": {"img_size": 224}},
        "text": {"depth": 12, "context_length": 512},
        "fusion": {"depth": 6}, "decoder": {"depth": 6, "max_length": 64},
    },
}
