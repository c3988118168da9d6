"""The ``model`` section of the schema: encoders, fusion, decoders, sharing, further modalities."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmtl.config.fields import NON_NEGATIVE, POSITIVE, Range, choice, setting


@dataclass
class ImageEncoderConfig:
    """Image encoder: a registry key plus the options the registered builder reads."""

    name: str = "timm"
    timm_model: str = "resnet18"
    # passed to timm.create_model as they are (architecture knobs of the chosen model)
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: int = 64
    pretrained_path: str | None = None
    # name="timm", CNNs: average-pool the feature map by this factor before it becomes tokens (a
    # high-resolution backbone with few tokens for the fusion)
    feature_pool: int = setting(1, range=POSITIVE)
    # name="open_clip": an open_clip model config name, and overrides of its vision_cfg
    open_clip_model: str = "ViT-B-32"
    open_clip_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TextEncoderConfig:
    """Text encoder over open_clip BPE tokens."""

    name: str = "transformer"
    depth: int = 2
    context_length: int = setting(128, range=POSITIVE)
    # "dataset": embed only the BPE tokens seen in the training split (fast on CPU);
    # "full": all 49,408 open_clip BPE tokens (needed to load pretrained text towers).
    vocab: str = choice("dataset", "dataset", "full")
    # name="open_clip": an open_clip model config name, overrides of its text_cfg, a local checkpoint
    # (a full open_clip one or the text tower's), and whether tokens see later tokens
    open_clip_model: str = "ViT-B-32"
    open_clip_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained_path: str | None = None
    bidirectional: bool = False


@dataclass
class FusionConfig:
    """How image and text tokens become one shared representation."""

    name: str = "single_stream"
    depth: int = 2


@dataclass
class DecoderConfig:
    """Text decoders of the generation tasks (captioning, summarization)."""

    depth: int = 2
    max_length: int = setting(40, range=POSITIVE)
    # true: one decoder for every generation task, told the task by a learned prompt (OFA-style)
    shared: bool = False
    # pointer-generator: decoders may copy tokens of the fused text (names, rare words of a document)
    copy: bool = True


@dataclass
class ModalityConfig:
    """An input modality beyond image and text (``model.modalities.<name>``; name = its MODALITIES key).

    Fields a modality does not use are ignored (a 2-D map reads the timm fields, audio the
    spectrogram ones).
    """

    # MODALITY_ENCODERS key ("": the modality's default encoder)
    encoder: str = ""
    # an existing modality whose place this one takes for the tasks that read it (depth -> image):
    # a batch that carries this modality feeds it to those tasks instead ("": the modality's default)
    stands_for: str = ""
    # fine-tuning: start this modality's encoder from a trained one's weights where they fit (first
    # convolution summed over its input channels), e.g. depth from image ("": a fresh encoder)
    init_from: str = ""
    # 2-D maps: side in pixels and timm model (0 / "": the image encoder's), timm arguments ({}: the image's)
    size: int = 0
    timm_model: str = ""
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    # audio: waveforms are resampled to sample_rate and cut or padded to seconds; log-mel settings
    sample_rate: int = 8000
    seconds: float = 1.0
    n_fft: int = 256
    hop_length: int = 128
    n_mels: int = 48
    channels: int = 32


@dataclass
class ModelConfig:
    """The model; ``preset`` fills every field first, the rest of the config overrides it."""

    preset: str = "tiny"
    width: int = setting(128, range=POSITIVE)
    num_heads: int = setting(4, range=Range(0, low_open=True))
    mlp_ratio: float = setting(4.0, range=Range(0, low_open=True))
    dropout: float = setting(0.0, range=Range(0, 1, high_open=True))
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    # fusion trunk across tasks: hard (one shared trunk), soft (one per task, cross-stitch mixing),
    # hybrid (shared trunk + per-task LoRA adapters, + task-gated experts when moe_experts > 0)
    sharing: str = choice("hard", "hard", "soft", "hybrid")
    lora_rank: int = setting(4, range=POSITIVE)
    moe_experts: int = setting(0, range=NON_NEGATIVE)
    # further input modalities (mmtl.modalities): name -> its settings; image and text are above
    modalities: dict[str, ModalityConfig] = field(default_factory=dict)
