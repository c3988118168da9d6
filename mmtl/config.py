"""Typed experiment configuration: dataclass schema, YAML values, dotted CLI overrides, clear errors.

Resolution order, later wins: dataclass defaults -> model preset (``model.preset``) -> YAML file ->
``key=value`` overrides. Every unknown key or ill-typed value raises a ConfigError that names the
key and what would be valid.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from mmtl.errors import ConfigError

INT64_LIMIT = 2**63


def choice(default: Any, *options: Any) -> Any:
    """A dataclass field whose value must be one of ``options``."""
    return field(default=default, metadata={"choices": options})


@dataclass
class SyntheticConfig:
    """Size and difficulty of the built-in "shapes world" data set (used by ``mmtl quickstart``)."""

    train: int = 3000
    val: int = 200
    test: int = 200
    seed: int = 0
    difficulty: str = choice("medium", "easy", "medium", "hard")
    image_size: int = 64
    shard_size: int = 1000


@dataclass
class SourceConfig:
    """One training source of ``data.sources``: a shard directory, its split, the tasks it feeds, a weight."""

    # a shard directory, a .tar, a brace pattern, a pipe: command, or a list of tar files
    path: str | list[str] = ""
    split: str | None = None  # None: data.train_split
    tasks: list[str] | None = None  # None: every task of the run it has annotations for
    weight: float = 1.0  # data.mixing=fixed: sources are drawn in proportion to their weights
    map: list[str] | None = None  # FIELD=PATH items for shards without dataset.json (None: data.map)

    def __post_init__(self) -> None:
        self.path = join_shard_list(self.path)


def join_shard_list(path: str | list[str]) -> str:
    """A list of tar files -> one webdataset URL string (``a.tar::b.tar``), so a path is always a str."""
    return "::".join(str(p) for p in path) if isinstance(path, list) else path


@dataclass
class DataConfig:
    """Where the shards are and how they are streamed."""

    # a shard directory, a .tar, a brace pattern (shards/{00000..00099}.tar), a pipe: command, or a
    # list of tar files; shards without a dataset.json are scanned once (data_pipelines/shardsets.py)
    path: str | list[str] = "data/quickstart"
    # how shards without a dataset.json feed the tasks: FIELD=PATH items, e.g. [captions=txt, labels=json.label]
    map: list[str] = field(default_factory=list)
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = 32
    num_workers: int = 0
    shuffle_buffer: int = 1000
    # stop when more than this fraction of the samples seen (after 100) was corrupt and skipped
    max_corrupt_fraction: float = 0.01
    # a decoded image with more pixels than this counts as a decompression bomb and is skipped
    max_image_pixels: int = 64_000_000
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # training stream: shards resampled forever, or epochs (new shard order each; every sample once
    # per epoch over all ranks and workers)
    mode: str = choice("resampled", "resampled", "epoch")
    # several training sources (empty: data.path alone), mixed by a strategy (data_pipelines/mixing.py)
    sources: list[SourceConfig] = field(default_factory=list)
    mixing: str = choice("natural", "natural", "proportional", "temperature", "fixed", "round_robin")
    mixing_temperature: float = 2.0  # mixing=temperature: task shares p_t ∝ n_t^(1/T)
    # >0: batches drawn from a buffer of this many batches grouped by document length (less padding)
    length_buckets: int = 0

    def __post_init__(self) -> None:
        self.path = join_shard_list(self.path)


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
    feature_pool: int = 1
    # name="open_clip": an open_clip model config name, and overrides of its vision_cfg
    open_clip_model: str = "ViT-B-32"
    open_clip_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TextEncoderConfig:
    """Text encoder over open_clip BPE tokens."""

    name: str = "transformer"
    depth: int = 2
    context_length: int = 128
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
    max_length: int = 40
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
    width: int = 128
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    # fusion trunk across tasks: hard (one shared trunk), soft (one per task, cross-stitch mixing),
    # hybrid (shared trunk + per-task LoRA adapters, + task-gated experts when moe_experts > 0)
    sharing: str = choice("hard", "hard", "soft", "hybrid")
    lora_rank: int = 4
    moe_experts: int = 0
    # further input modalities (mmtl.modalities): name -> its settings; image and text are above
    modalities: dict[str, ModalityConfig] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of a training run."""

    steps: int = 560
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 30
    schedule: str = choice("cosine", "cosine", "linear", "constant")
    grad_clip: float = 1.0
    # auto: bf16 autocast on a GPU, fp32 on a CPU; pure_bf16: bf16 weights, gradients and optimiser state
    precision: str = choice("auto", "auto", "fp32", "bf16", "fp16", "pure_bf16")
    device: str = "auto"
    # micro-batches of data.batch_size per optimiser step (global batch = batch x accum x ranks)
    grad_accum: int = 1
    # torch.compile every transformer block and the image backbone (the first steps compile)
    compile: bool = False
    # recompute encoder, fusion and decoder activations in the backward pass (less memory, ~30% more compute)
    grad_checkpointing: bool = False
    # exponential moving average of the weights (0: off); checkpoints then hold ema.safetensors,
    # which evaluation and inference use
    ema_decay: float = 0.0
    # a step whose loss or gradient is not finite is skipped; this many in a row stop the run
    max_nonfinite_steps: int = 5
    log_every: int = 10
    # per-task gradient norms and cosines on the shared parameters cost one backward per task for
    # loss-weighting balancers: measured on log steps that fall every this many steps (0: never)
    monitor_every: int = 50
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    progress: bool = True
    # start over in an output_dir that already holds a run (its log, plots and checkpoints are deleted)
    overwrite: bool = False
    # validate on data.val_split every this many steps and at the last step (0: never); see ValidationConfig
    eval_every: int = 0
    # under torchrun: shard parameters, gradients and optimiser state over the ranks with FSDP2
    # (loss-weighting balancers only; no EMA or periodic validation); one process trains unsharded
    fsdp: bool = False


@dataclass
class BalancerConfig:
    """How per-task losses are combined into one update.

    A method's own settings go in ``options`` (e.g. ``balancer.options.c=0.5`` for CAGrad), checked
    against the dataclass that the registered balancer owns (``Balancer.Settings``).
    """

    name: str = "equal"
    weights: dict[str, float] = field(default_factory=dict)
    # gradient balancers: per-task gradients on all shared parameters, or on the shared
    # representation (one backward through the trunk); recomputed every ``update_every`` steps
    on: str = choice("params", "params", "representation")
    update_every: int = 1
    # compute the T per-task gradients with one vmapped backward (torch.autograd.grad(is_grads_batched=True))
    # instead of T backwards: same numbers; on 2 CPU cores it was slower (docs/benchmarks.md), so off by default
    batched_backward: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    # settings that earlier versions kept flat in this section, and the balancers that read them:
    # configs saved by those versions still load, each value moving into ``options`` where it applies
    LEGACY_KEYS: ClassVar[dict[str, tuple[str, ...]]] = {
        "temperature": ("dwa",), "window": ("dwa",), "lr": ("gradnorm", "famo"), "gamma": ("famo",),
        "alpha": ("gradnorm",), "c": ("cagrad",), "beta": ("gradvac",), "iterations": ("cagrad", "nash_mtl"),
    }

    @classmethod
    def migrate(cls, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` with the legacy flat keys moved into ``options`` (dropped where the method has no such setting)."""
        legacy = {key: values[key] for key in cls.LEGACY_KEYS if key in values}
        if not legacy:
            return values
        name = values.get("name", cls.name)
        options = values.get("options") or {}
        moved = {key: value for key, value in legacy.items() if name in cls.LEGACY_KEYS[key]}
        rest = {key: value for key, value in values.items() if key not in legacy}
        return {**rest, "options": {**moved, **options} if isinstance(options, dict) else options}


@dataclass
class GenerationConfig:
    """Decoding options for captioning and summarization (greedy when num_beams=1 and do_sample=false)."""

    max_length: int = 40
    num_beams: int = 1
    length_penalty: float = 1.0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    seed: int = 0
    # no EOS before this many tokens (benchmarks use it to force a fixed length)
    min_length: int = 0


# name -> (lowest, highest or None, lowest excluded): what decoding can run with. A bigger beam or a
# smaller temperature than this costs unbounded memory, or overflows the logits into NaN.
GENERATION_BOUNDS: dict[str, tuple[float, float | None, bool]] = {
    "max_length": (1, 100_000, False),
    "num_beams": (1, 64, False),
    "length_penalty": (-100.0, 100.0, False),
    "temperature": (1e-4, 1e4, False),
    "top_k": (0, 1_000_000, False),
    "top_p": (0.0, 1.0, True),
    "no_repeat_ngram_size": (0, 1_000, False),
    "repetition_penalty": (0.0, 100.0, True),
    "seed": (0, 2**63 - 1, False),
    "min_length": (0, 100_000, False),
}


def validate_generation(gen: GenerationConfig, prefix: str = "generation") -> None:
    """Range checks of decoding options (types are checked when the dataclass is built)."""
    for name, (low, high, low_open) in GENERATION_BOUNDS.items():
        value = getattr(gen, name)
        too_low = value <= low if low_open else value < low
        if (isinstance(value, float) and not math.isfinite(value)) or too_low or (high is not None and value > high):
            lower = f"> {low}" if low_open else f">= {low}"
            rule = f"must be {lower}" + (f" and <= {high}" if high is not None else "")
            raise ConfigError(f"{prefix}.{name} {rule}, got {value!r}")


@dataclass
class EvalConfig:
    """Held-out evaluation after training."""

    split: str = "test"
    max_samples: int = 0
    batch_size: int = 64
    threshold: float = 0.5
    num_examples: int = 3
    generation: GenerationConfig = field(default_factory=GenerationConfig)


@dataclass
class ValidationConfig:
    """Periodic validation during training (``train.eval_every``): drift alarm, best checkpoint, early stop.

    Scores compare each validation's metrics with a reference: the single-task ``baselines`` file
    when given (Δm), else the run's first validation (mean relative improvement over it).
    """

    # samples of data.val_split per validation (0: the whole split)
    max_samples: int = 0
    # baselines.json from `mmtl baselines` (evaluated on the same split as data.val_split)
    baselines: str | None = None
    # a task regresses when its primary metric is more than this fraction below the reference
    tolerance: float = 0.02
    # which validation's weights go to checkpoints/best: highest Δm, lowest summed validation loss,
    # or the latest; with delta_m/loss a validation where a task regressed is best only if all did
    select: str = choice("delta_m", "delta_m", "loss", "last")
    # stop when the selection score (Δm for select=last) has not improved for this many validations (0: never)
    early_stop_patience: int = 0
    # smallest score gain that counts as an improvement for early stopping and best selection
    min_improvement: float = 0.0
    # warn when a task's primary metric worsened for this many consecutive validations while the
    # mean of the other tasks' primary metrics improved (0: no drift alarm)
    drift_patience: int = 3


@dataclass
class FinetuneConfig:
    """``mmtl finetune``: what is added to a trained model and how it is trained (mmtl.finetune)."""

    # frozen: only new parts train; lora: new parts + low-rank adapters on fusion and decoders, used
    # only for inputs of the new modalities and for new tasks; full: everything, old parts at a lower LR
    strategy: str = choice("frozen", "frozen", "lora", "full")
    add_modalities: list[str] = field(default_factory=list)
    add_tasks: list[str] = field(default_factory=list)
    # weight of the loss pulling a new modality's pooled representation toward its paired one's (0: off)
    align_weight: float = 0.0
    old_lr_scale: float = 0.1  # full: learning-rate factor of the trained parts
    lora_rank: int = 8
    # non-regression check: the old tasks on the base model's data, this split, at most this many samples
    regression_split: str = "val"
    regression_samples: int = 200


@dataclass
class ExperimentConfig:
    """Everything a run needs. The defaults are the quickstart experiment."""

    name: str = "quickstart"
    output_dir: str = "runs/quickstart"
    seed: int = 0
    tasks: list[str] = field(default_factory=lambda: ["recognition", "captioning", "summarization"])
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    balancer: BalancerConfig = field(default_factory=BalancerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    # per-task settings by task registry key, e.g. {summarization: {mode: extractive}}; each task's
    # entry is checked against the settings dataclass the task class owns (Task.settings_class)
    task_settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML-serialisable)."""
        return dataclasses.asdict(self)


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


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated recursively by ``update`` (neither input is modified).

    Keys ending in ``_kwargs`` are replaced whole: they are argument sets of one component,
    and mixing two sets (a preset's ViT knobs into a user's CNN) would be wrong.
    """
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and not str(key).endswith("_kwargs"):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.steps=200)")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
        raise ConfigError(f"override {_short(text)}: value is not valid YAML ({problem})") from None
    except RecursionError:
        raise ConfigError(f"override {key}: value nested too deeply") from None
    return key.split("."), value


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one YAML value against a type hint."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a section (mapping), got {_short(value)}")
        return build_dataclass(tp, value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {_short(value)}")
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {_short(value)}")
        return {_convert(k, key_tp, key): _convert(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {_short(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -INT64_LIMIT <= value < INT64_LIMIT:
                raise ConfigError(f"{key} must fit in 64 bits (|value| < 2**63), got {value}")
            return value
        raise ConfigError(f"{key} must be an integer, got {_short(value)}")
    if tp is float:
        number = _as_float(value)
        if number is None:
            raise ConfigError(f"{key} must be a number, got {_short(value)}")
        if not math.isfinite(number):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {_short(value)}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _as_float(value: Any) -> float | None:
    """A YAML number (or numeric string: YAML 1.1 reads 1e-3 without a dot as one) as a float; None if not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, str)):
        try:
            return float(value)
        except (ValueError, OverflowError):
            return None
    return None


def _short(value: Any) -> str:
    """``repr(value)``, cut to a readable length."""
    try:
        text = repr(value)
    except RecursionError:
        return "(a value nested too deeply)"
    return text if len(text) <= 80 else text[:77] + "..."


def build_dataclass(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and checking types and choices."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = cls.migrate(values) if hasattr(cls, "migrate") else values  # a section's own legacy keys
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            valid = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key {key!r}; valid keys here: {valid}")
        converted = _convert(value, hints[name], key)
        options = fields[name].metadata.get("choices")
        if options and converted not in options:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, options))}; got {converted!r}")
        kwargs[name] = converted
    return cls(**kwargs)


def resolve_config(raw: dict[str, Any] | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Build an ExperimentConfig from a raw mapping plus ``key=value`` overrides, applying the model preset."""
    tree = copy.deepcopy(raw or {})
    for text in overrides or []:
        path, value = parse_override(text)
        _set_path(tree, path, value)
    model = tree.get("model", {})
    if not isinstance(model, dict):
        raise ConfigError("model must be a section (mapping)")
    preset = model.get("preset", ModelConfig.preset)
    if not isinstance(preset, str) or preset not in MODEL_PRESETS:
        raise ConfigError(f"unknown model.preset {_short(preset)}; valid: {', '.join(sorted(MODEL_PRESETS))}")
    tree["model"] = deep_merge(MODEL_PRESETS[preset], model)
    config = build_dataclass(ExperimentConfig, tree)
    validate(config)
    return config


def validate(config: ExperimentConfig) -> None:
    """Cross-field checks that a single field's type cannot express."""
    from mmtl.registry import BALANCERS, FUSIONS, IMAGE_ENCODERS, TASKS, TEXT_ENCODERS
    import mmtl.components  # noqa: F401  (registers every built-in component)

    if not config.tasks:
        raise ConfigError("tasks must name at least one task")
    for task in config.tasks:
        TASKS.get(task)
    if len(set(config.tasks)) != len(config.tasks):
        raise ConfigError(f"tasks lists a task twice: {config.tasks}")
    IMAGE_ENCODERS.get(config.model.image.name)
    TEXT_ENCODERS.get(config.model.text.name)
    FUSIONS.get(config.model.fusion.name)
    balancer = BALANCERS.get(config.balancer.name)
    if config.balancer.update_every < 1:
        raise ConfigError("balancer.update_every must be >= 1")
    balancer.check_options(config.balancer.options)
    unknown = set(config.balancer.weights) - set(config.tasks)
    if unknown:
        raise ConfigError(f"balancer.weights names tasks not in tasks: {', '.join(sorted(unknown))}")
    if config.model.width % config.model.num_heads:
        raise ConfigError(f"model.width ({config.model.width}) must be divisible by model.num_heads ({config.model.num_heads})")
    positive = {
        "train.steps": config.train.steps, "data.batch_size": config.data.batch_size,
        "model.width": config.model.width, "model.text.context_length": config.model.text.context_length,
        "model.decoder.max_length": config.model.decoder.max_length,
        "model.lora_rank": config.model.lora_rank, "model.image.feature_pool": config.model.image.feature_pool,
        "train.grad_accum": config.train.grad_accum, "train.max_nonfinite_steps": config.train.max_nonfinite_steps,
        "train.keep_checkpoints": config.train.keep_checkpoints,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    data = config.data
    if data.mixing_temperature <= 0 or data.length_buckets < 0:
        raise ConfigError("data.mixing_temperature must be positive and data.length_buckets >= 0")
    for i, source in enumerate(data.sources):
        if not source.path:
            raise ConfigError(f"data.sources[{i}].path is required")
        extra = sorted(set(source.tasks or []) - set(config.tasks))
        if extra:
            raise ConfigError(f"data.sources[{i}].tasks names {', '.join(extra)}, not in tasks: {', '.join(config.tasks)}")
        if source.weight < 0:
            raise ConfigError(f"data.sources[{i}].weight must be >= 0, got {source.weight}")
    if config.model.moe_experts < 0:
        raise ConfigError(f"model.moe_experts must be >= 0, got {config.model.moe_experts}")
    if not 0.0 <= config.train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {config.train.ema_decay}")
    _validate_ranges(config)
    non_negative = {
        "train.eval_every": config.train.eval_every, "validation.max_samples": config.validation.max_samples,
        "validation.tolerance": config.validation.tolerance, "validation.min_improvement": config.validation.min_improvement,
        "validation.early_stop_patience": config.validation.early_stop_patience,
        "validation.drift_patience": config.validation.drift_patience,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    _validate_modalities(config)
    _validate_fsdp(config)
    _validate_task_settings(config)


def _validate_task_settings(config: ExperimentConfig) -> None:
    """``task_settings`` names tasks of the run, each checked against its task class's settings dataclass."""
    from mmtl.registry import TASKS

    known = [*config.tasks, *config.finetune.add_tasks]
    for key, values in config.task_settings.items():
        if key not in known:
            raise ConfigError(f"task_settings.{key}: {key!r} is not a task of this run; tasks: {', '.join(known)}")
        TASKS.get(key).parse_settings(values, f"task_settings.{key}")


def _validate_ranges(config: ExperimentConfig) -> None:
    """Numbers a run cannot use (every float is already known to be finite)."""
    train, data = config.train, config.data
    rules = [
        ("train.lr", train.lr, 0 < train.lr <= 100, "in (0, 100]"),
        ("train.weight_decay", train.weight_decay, train.weight_decay >= 0, ">= 0"),
        ("train.grad_clip", train.grad_clip, train.grad_clip > 0, "> 0"),
        ("train.warmup_steps", train.warmup_steps, train.warmup_steps >= 0, ">= 0"),
        ("train.log_every", train.log_every, train.log_every >= 1, ">= 1"),
        ("train.checkpoint_every", train.checkpoint_every, train.checkpoint_every >= 0, ">= 0"),
        ("train.monitor_every", train.monitor_every, train.monitor_every >= 0, ">= 0"),
        ("data.num_workers", data.num_workers, data.num_workers >= 0, ">= 0"),
        ("data.shuffle_buffer", data.shuffle_buffer, data.shuffle_buffer >= 0, ">= 0"),
        ("data.max_corrupt_fraction", data.max_corrupt_fraction, 0 <= data.max_corrupt_fraction <= 1, "in [0, 1]"),
        ("data.max_image_pixels", data.max_image_pixels, data.max_image_pixels > 0, "> 0"),
        ("model.dropout", config.model.dropout, 0 <= config.model.dropout < 1, "in [0, 1)"),
        ("model.mlp_ratio", config.model.mlp_ratio, config.model.mlp_ratio > 0, "> 0"),
        ("model.num_heads", config.model.num_heads, config.model.num_heads > 0, "> 0"),
        ("eval.threshold", config.eval.threshold, 0 <= config.eval.threshold <= 1, "in [0, 1]"),
        ("eval.batch_size", config.eval.batch_size, config.eval.batch_size >= 1, ">= 1"),
        ("eval.max_samples", config.eval.max_samples, config.eval.max_samples >= 0, ">= 0"),
    ]
    for key, value, ok, rule in rules:
        if not ok:
            raise ConfigError(f"{key} must be {rule}, got {value}")
    validate_generation(config.eval.generation, "eval.generation")


def _validate_fsdp(config: ExperimentConfig) -> None:
    """Settings that sharded training (train.fsdp) cannot honour."""
    from mmtl.registry import BALANCERS

    if not config.train.fsdp:
        return
    if BALANCERS.get(config.balancer.name).kind == "gradient":
        raise ConfigError(f"balancer.name={config.balancer.name} needs per-task gradients of whole parameters, "
                          "which train.fsdp=true shards; use train.fsdp=false (DDP) or a loss-weighting balancer")
    if config.train.ema_decay > 0:
        raise ConfigError("train.ema_decay > 0 is not supported with train.fsdp=true; use train.fsdp=false (DDP)")
    if config.train.eval_every > 0:
        raise ConfigError("train.eval_every > 0 (validation on rank 0) is not supported with train.fsdp=true; "
                          "use train.eval_every=0 and `mmtl eval` on the checkpoints, or train.fsdp=false")


def _validate_modalities(config: ExperimentConfig) -> None:
    """Extra modalities and fine-tuning additions name registered components."""
    from mmtl.registry import MODALITIES, MODALITY_ENCODERS, TASKS

    import mmtl.modalities  # noqa: F401  (registers the built-in modalities)

    for name, modality in config.model.modalities.items():
        if name in ("image", "text"):
            raise ConfigError(f"model.modalities.{name}: image and text are configured in model.image / model.text")
        MODALITIES.get(name)
        if modality.encoder:
            MODALITY_ENCODERS.get(modality.encoder)
        if modality.stands_for and modality.stands_for not in ("image", "text", *config.model.modalities):
            raise ConfigError(f"model.modalities.{name}.stands_for must name a modality of the model "
                              f"(image, text, {', '.join(config.model.modalities)}); got {modality.stands_for!r}")
        if modality.init_from and modality.init_from not in ("image", "text", *config.model.modalities):
            raise ConfigError(f"model.modalities.{name}.init_from must name a modality of the model; "
                              f"got {modality.init_from!r}")
    for name in config.finetune.add_modalities:
        MODALITIES.get(name)
    for name in config.finetune.add_tasks:
        TASKS.get(name)
    if config.finetune.align_weight < 0 or config.finetune.old_lr_scale <= 0 or config.finetune.lora_rank <= 0:
        raise ConfigError("finetune.align_weight must be >= 0, finetune.old_lr_scale and finetune.lora_rank > 0")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML experiment file (or the built-in defaults when ``path`` is None) and apply overrides."""
    raw = read_yaml_tree(Path(path)) if path is not None else {}
    return resolve_config(raw, overrides)


def read_yaml_tree(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config; its optional ``include`` list (paths relative to it) is merged first."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: include cycle")
    try:
        loaded = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    loaded = loaded or {}
    includes = loaded.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(item, str) and item for item in includes):
        raise ConfigError(f"{path}: include must be a file name or a list of file names, got {_short(includes)}")
    tree: dict[str, Any] = {}
    for include in includes:
        tree = deep_merge(tree, read_yaml_tree(path.parent / include, _seen + (path.resolve(),)))
    return deep_merge(tree, loaded)


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
