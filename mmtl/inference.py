"""Predictor: load a checkpoint and run any of its tasks on image-text pairs."""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from PIL import Image

from data_pipelines.loader import Collator, Example
from data_pipelines.modalities import read_input
from data_pipelines.sample import TEXT_INPUT_FIELD
from data_pipelines.transforms import (
    CorruptSampleError, decode_image, resize_center_crop, to_rgb, to_uint8_tensor,
)
from mmtl.builder import Components
from mmtl.checkpoint import load_checkpoint
import mmtl.components  # noqa: F401  (registers the components that configs name)
from mmtl.config import (  # noqa: F401  (GENERATION_BOUNDS: re-exported for the server's schema)
    GENERATION_BOUNDS, EvalConfig, ExperimentConfig, GenerationConfig, build_dataclass, validate_generation,
)
from mmtl.errors import MMTLError, os_error_message
from mmtl.precision import get_autocast, resolve_device

ImageInput = Image.Image | str | Path | bytes | None
GenerationInput = GenerationConfig | Mapping[str, Any] | None

PRECISIONS = ("fp32", "bf16", "fp16")
# Image.open only reads the header, so the pixel count is known before any pixel is decoded
DEFAULT_MAX_PIXELS = 40_000_000


class InputTooLarge(MMTLError):
    """An input exceeds a size limit (image bytes or pixels, text length): HTTP 413 in the server."""


@dataclass
class PredictionResult:
    """Outputs of every task that ran, keyed by task name (tags, caption, summary for the built-ins)."""

    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def tags(self) -> list[tuple[str, float]] | None:
        return self.outputs.get("recognition")

    @property
    def caption(self) -> str | None:
        return self.outputs.get("captioning")

    @property
    def summary(self) -> str | None:
        return self.outputs.get("summarization")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (scored labels become ``{"label", "score"}`` objects)."""
        return {name: _jsonable(value) for name, value in self.outputs.items()}


def _is_scored_labels(value: Any) -> bool:
    """True for a list of ``(label, score)`` pairs, the output shape of tagging tasks."""
    return isinstance(value, list) and all(
        isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], float) for v in value
    )


def _jsonable(value: Any) -> Any:
    if _is_scored_labels(value) and value:
        return [{"label": label, "score": score} for label, score in value]
    return value


@dataclass(frozen=True)
class PredictOptions:
    """Resolved per-call options: which tasks run and how (``eval`` is what the tasks read as options)."""

    tasks: tuple[str, ...]
    eval: EvalConfig
    top_k_tags: int = 0

    def key(self) -> str:
        """A string equal for equal options (requests with the same key can share one batch)."""
        return json.dumps([self.tasks, dataclasses.asdict(self.eval), self.top_k_tags], sort_keys=True)


def check_text(text: str | None, max_chars: int | None = None) -> str | None:
    """``text`` stripped, or None when empty; binary-looking or over-long text is a clear error."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise MMTLError(f"text must be a string, got {type(text).__name__}")
    if "\x00" in text or sum(not c.isprintable() and c not in "\n\r\t" for c in text[:4096]) > 0.1 * min(len(text), 4096):
        raise MMTLError("text looks binary (NUL or control characters); give plain UTF-8 text")
    if max_chars is not None and len(text) > max_chars:
        raise InputTooLarge(f"text has {len(text)} characters; the limit is {max_chars}")
    return text.strip() or None


def load_image(image: ImageInput, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image | None:
    """A PIL RGB image from a PIL image, a file path or encoded bytes; a clear error when it is not one.

    Decoded exactly as training data is (:func:`data_pipelines.transforms.decode_image`: EXIF
    orientation, transparency onto white), and ``max_pixels`` is checked from the header, before
    decoding, so a decompression bomb costs nothing.
    """
    if image is None:
        return None
    if isinstance(image, Image.Image):
        return to_rgb(image)
    data, name = read_input(image, "image")
    try:
        return decode_image(data, max_pixels if max_pixels is not None else sys.maxsize)
    except CorruptSampleError as exc:
        if exc.reason == "decompression_bomb":
            raise InputTooLarge(f"{name}: {exc.detail}") from None
        raise MMTLError(f"{name} is not a readable image ({exc.detail})") from None


def check_device(name: str) -> torch.device:
    """cpu, cuda, cuda:N or auto as a torch device; one that this machine lacks is an MMTLError."""
    try:
        device = resolve_device(str(name))
    except MMTLError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        if device is None and str(name).startswith("cuda"):
            raise MMTLError(f"device {name!r} asked for, but no CUDA GPU is available; use --device cpu")
        raise MMTLError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise MMTLError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


class Predictor:
    """Runs a trained model on image-text pairs."""

    def __init__(self, components: Components, config: ExperimentConfig, device: torch.device,
                 precision: str = "fp32", meta: dict[str, Any] | None = None) -> None:
        self.components = components
        self.config = config
        self.device = device
        self.precision = precision
        self.meta = meta or {}
        self.checkpoint: Path | None = None
        self.model = components.model.to(device).eval()
        self.tasks = {task.name: task for task in components.tasks}
        self.collate = Collator(components.tasks, config.model.image.image_size)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", precision: str = "fp32") -> "Predictor":
        """Load a checkpoint directory (or a run directory holding ``checkpoints/LATEST``).

        ``device`` is cpu, cuda, cuda:N or auto; ``precision`` fp32, bf16 (autocast) or fp16 (CUDA only).
        """
        if precision not in PRECISIONS:
            raise MMTLError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        torch_device = check_device(device)
        if precision == "fp16" and torch_device.type != "cuda":
            raise MMTLError("fp16 needs a CUDA GPU; use fp32 or bf16 on a CPU")
        components, config, meta, checkpoint = load_checkpoint(path)  # a full checkpoint or a fine-tuned delta
        predictor = cls(components, config, torch_device, precision, meta)
        predictor.checkpoint = checkpoint
        return predictor

    # -- options -----------------------------------------------------------------------------
    def options(self, tasks: Sequence[str] | str | None = None, generation: GenerationInput = None,
                threshold: float | None = None, top_k_tags: int | None = None) -> PredictOptions:
        """Resolve per-call options against the checkpoint's eval defaults (unknown task/key: MMTLError).

        ``generation`` is a GenerationConfig or a mapping of overrides of its fields.
        """
        if isinstance(tasks, str):
            tasks = [t.strip() for t in tasks.split(",") if t.strip()]
        names = list(tasks) if tasks else list(self.tasks)
        unknown = [n for n in names if n not in self.tasks]
        if unknown:
            raise MMTLError(f"unknown task {', '.join(unknown)}; this model has: {', '.join(self.tasks)}")
        base = self.config.eval
        if generation is None:
            gen = base.generation
        elif isinstance(generation, GenerationConfig):
            gen = generation
        elif isinstance(generation, Mapping):
            gen = build_dataclass(GenerationConfig, {**dataclasses.asdict(base.generation), **generation}, "generation")
        else:
            raise MMTLError(f"generation must be a GenerationConfig or a mapping, got {type(generation).__name__}")
        validate_generation(gen)
        if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
            raise MMTLError(f"threshold must be in [0, 1], got {threshold}")
        if top_k_tags is not None and int(top_k_tags) < 0:
            raise MMTLError(f"top_k_tags must be >= 0, got {top_k_tags}")
        eval_options = dataclasses.replace(
            base, generation=gen, threshold=base.threshold if threshold is None else float(threshold))
        return PredictOptions(tuple(dict.fromkeys(names)), eval_options, int(top_k_tags or 0))

    # -- inputs ------------------------------------------------------------------------------
    def prepare(self, image: ImageInput = None, text: str | None = None, key: str = "0",
                max_pixels: int | None = DEFAULT_MAX_PIXELS, max_text_chars: int | None = None,
                inputs: Mapping[str, str | Path | bytes] | None = None) -> Example:
        """Decode and check one pair (raises MMTLError for a bad image, binary text, or neither input).

        ``inputs``: files (paths or bytes) of the model's further modalities by name, e.g. ``{"depth": "d.png"}``.
        """
        try:
            pil = load_image(image, max_pixels)
            text = check_text(text, max_text_chars)
            extra = {}
            for name, source in (inputs or {}).items():
                unit = self.model.modalities.get(name)
                if unit is None or name in ("image", "text"):
                    others = [m for m in self.model.modalities if m not in ("image", "text")]
                    raise MMTLError(f"this model has no modality {name!r}; its further modalities: "
                                    f"{', '.join(others) or '(none)'}")
                extra[name] = unit.load(source)
        except OSError as exc:  # unreadable file: permission denied, a directory, an I/O error
            raise MMTLError(f"cannot read {os_error_message(exc)}") from exc
        if pil is None and text is None and not extra:
            raise MMTLError("give an image, a text, or both")
        size = self.config.model.image.image_size
        pixels = to_uint8_tensor(resize_center_crop(pil, size)) if pil is not None else None
        ids = self.components.vocab.encode(text, self.config.model.text.context_length) if text else []
        # the raw document rides along as the annotation: tasks may read it beside the tokens (an
        # extractive summary selects its sentences)
        return Example(key, pixels, ids, {}, {TEXT_INPUT_FIELD: text} if text else {}, extra)

    # -- prediction --------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, examples: Sequence[Example], options: PredictOptions) -> list[PredictionResult]:
        """Predict prepared examples in one batch."""
        if not examples:
            return []
        batch = self.collate(list(examples)).to(self.device)
        with get_autocast(self.precision, self.device):
            outputs = self.model.predict(batch, list(options.tasks), options.eval)
        results = []
        for row, example in enumerate(examples):
            present = {"image"} if example.image is not None else set()
            present |= ({"text"} if example.text else set()) | set(example.inputs)
            row_out = {}
            for name in options.tasks:
                if self.model.has_inputs(self.tasks[name], present):
                    value = outputs[name][row]
                    if options.top_k_tags and _is_scored_labels(value):
                        value = value[: options.top_k_tags]
                    row_out[name] = value
            results.append(PredictionResult(row_out))
        return results

    def predict(self, image: ImageInput = None, text: str | None = None, tasks: Sequence[str] | None = None, *,
                generation: GenerationInput = None, threshold: float | None = None,
                top_k_tags: int | None = None,
                inputs: Mapping[str, str | Path | bytes] | None = None) -> PredictionResult:
        """Predict one image-text pair (plus ``inputs`` of further modalities, e.g. ``{"depth": "d.png"}``);
        tasks whose required input is missing are skipped."""
        return self.predict_batch([image], [text], tasks, generation=generation, threshold=threshold,
                                  top_k_tags=top_k_tags, inputs=[inputs or {}])[0]

    def predict_batch(self, images: Sequence[ImageInput], texts: Sequence[str | None],
                      tasks: Sequence[str] | None = None, *, generation: GenerationInput = None,
                      threshold: float | None = None, top_k_tags: int | None = None,
                      inputs: Sequence[Mapping[str, str | Path | bytes]] | None = None) -> list[PredictionResult]:
        """Predict a list of pairs in one batch (``images``, ``texts`` and ``inputs`` are aligned; any may hold None)."""
        if len(images) != len(texts):
            raise MMTLError(f"got {len(images)} images but {len(texts)} texts")
        inputs = list(inputs) if inputs is not None else [{}] * len(images)
        if len(inputs) != len(images):
            raise MMTLError(f"got {len(images)} images but {len(inputs)} sets of further inputs")
        options = self.options(tasks, generation, threshold, top_k_tags)
        examples = []
        for i, (image, text) in enumerate(zip(images, texts)):
            try:
                examples.append(self.prepare(image, text, key=str(i), inputs=inputs[i]))
            except InputTooLarge as exc:
                raise InputTooLarge(f"pair {i}: {exc}") from None
            except MMTLError as exc:
                raise MMTLError(f"pair {i}: {exc}") from None
        return self.run(examples, options)

    def info(self) -> dict[str, Any]:
        """What the model does: tasks (with their inputs), classes, parameter counts, image size."""
        return {
            "tasks": {name: {"inputs": list(t.inputs), "required_inputs": list(t.required_inputs)}
                      for name, t in self.tasks.items()},
            "classes": list(self.components.classes),
            "modalities": {name: {"stands_for": unit.stands_for} for name, unit in self.model.modalities.items()},
            "parameters": self.model.parameter_report(),
            "step": self.meta.get("step"),
            "mmtl_version": self.meta.get("mmtl_version"),
            "image_size": self.config.model.image.image_size,
            "text_context_length": self.config.model.text.context_length,
            "device": str(self.device),
            "precision": self.precision,
            "defaults": {"threshold": self.config.eval.threshold,
                         "generation": dataclasses.asdict(self.config.eval.generation)},
        }
