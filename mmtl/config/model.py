"""The ``model`` section of the schema: encoders, fusion, decoders, sharing, further modalities."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from mmtl.config.fields import Range, between, choice, setting
from mmtl.config.slots import Slot


@dataclass
class ImageEncoderConfig:
    """Image encoder: a registry key plus what every image encoder reads.

    The registered encoder's own settings (its ``Settings`` dataclass, e.g. ``timm_model``,
    ``timm_kwargs``, ``feature_pool`` for ``timm``) sit beside these keys in YAML and in ``options`` here.
    """

    slot: ClassVar[Slot] = Slot("image encoder")
    name: str = "timm"
    image_size: int = setting(64, range=between(1, 16_384))
    pretrained_path: str | None = setting(None, local=True)  # the checkpoint holds the weights
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TextEncoderConfig:
    """Text encoder over open_clip BPE tokens; the registered encoder's own settings (e.g. ``depth`` for
    ``transformer``) sit beside these keys in YAML and in ``options`` here."""

    slot: ClassVar[Slot] = Slot("text encoder")
    name: str = "transformer"
    context_length: int = setting(128, range=between(1, 1_048_576))
    # "dataset": embed only the BPE tokens seen in the training split (fast on CPU);
    # "full": all 49,408 open_clip BPE tokens (needed to load pretrained text towers).
    vocab: str = choice("dataset", "dataset", "full")
    # a local checkpoint of the text tower, for encoders that load one
    pretrained_path: str | None = setting(None, local=True)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class FusionConfig:
    """How image and text tokens become one shared representation: a registry key plus what every fusion
    reads (a fusion's own settings, where it has some, sit beside these keys)."""

    slot: ClassVar[Slot] = Slot("fusion")
    name: str = "single_stream"
    depth: int = setting(2, range=between(0, 1_000))
    # heads read the fusion's input tokens (each stream's, layer-normed) after its output tokens: a path
    # around the trunk. On shapes world this took multi-task captioning from BLEU-4 68.0 / 68.2 to
    # 75.9 / 75.9 (seeds 1 / 2; docs/benchmarks.md, "Heads read the fusion's inputs too")
    keep_inputs: bool = setting(True, earlier=False)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DecoderConfig:
    """Text decoders of the generation tasks (captioning, summarization)."""

    depth: int = setting(2, range=between(0, 1_000))
    max_length: int = setting(40, range=between(1, 1_048_576))
    # true: one decoder for every generation task, told the task by a learned prompt (OFA-style)
    shared: bool = False
    # pointer-generator: decoders may copy tokens of the fused text (names, rare words of a document)
    copy: bool = True
    # true: the output layer reuses the token embedding (fewer parameters for a large vocabulary).
    # false (default): a separate output layer, and embeddings at unit scale; on shapes world this took
    # single-task captioning from BLEU-4 77.5 / 64.0 (seeds 0 / 1) to 75.8 / 76.5 (docs/benchmarks.md)
    tie_embeddings: bool = setting(False, earlier=True)


@dataclass
class ModalityConfig:
    """An input modality beyond image and text (``model.modalities.<name>``; name = its MODALITIES key).

    The modality's own settings (its ``Settings`` dataclass: ``size`` and ``timm_model`` of a 2-D map,
    ``sample_rate`` or ``n_mels`` of audio) sit beside these keys in YAML and in ``options`` here.
    """

    slot: ClassVar[Slot] = Slot("modality", selector="")
    # MODALITY_ENCODERS key ("": the modality's default encoder)
    encoder: str = ""
    # an existing modality whose place this one takes for the tasks that read it (depth -> image):
    # a batch that carries this modality feeds it to those tasks instead ("": the modality's default)
    stands_for: str = ""
    # fine-tuning: start this modality's encoder from a trained one's weights where they fit (first
    # convolution summed over its input channels), e.g. depth from image ("": a fresh encoder)
    init_from: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """The model; ``preset`` fills every field first, the rest of the config overrides it."""

    preset: str = "tiny"
    width: int = setting(128, range=between(1, 65_536))
    num_heads: int = setting(4, range=between(0, 4_096, low_open=True))
    mlp_ratio: float = setting(4.0, range=between(0, 64, low_open=True))
    dropout: float = setting(0.0, range=Range(0, 1, high_open=True))
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    # fusion trunk across tasks: hard (one shared trunk), soft (one per task, cross-stitch mixing),
    # hybrid (shared trunk + per-task LoRA adapters, + task-gated experts when moe_experts > 0)
    sharing: str = choice("hard", "hard", "soft", "hybrid")
    lora_rank: int = setting(4, range=between(1, 65_536))
    moe_experts: int = setting(0, range=between(0, 1_024))
    # further input modalities (mmtl.modalities): name -> its settings; image and text are above
    modalities: dict[str, ModalityConfig] = field(default_factory=dict)
    # the memory (GB) a model may be estimated to need before it is built (0: MMTL_MEMORY_BUDGET_GB, else
    # this machine's memory); over it, the config is refused naming the costliest size (mmtl/config/budget.py)
    memory_budget_gb: float = setting(0.0, range=Range(0), local=True,
                                      help="memory budget of the model in GB (0: this machine's memory)")
