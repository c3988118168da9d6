"""Predictor: load a checkpoint and run any of its tasks on image-text pairs."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image, UnidentifiedImageError

from data_pipelines.loader import Collator, Example
from data_pipelines.transforms import resize_center_crop, to_uint8_tensor
from mmtl.builder import Components, components_from_meta
from mmtl.config import ExperimentConfig, load_config
from mmtl.errors import MMTLError
from mmtl.training.checkpoint import CONFIG_FILE, load_weights, read_meta, resolve_checkpoint
from mmtl.training.precision import get_autocast, resolve_device

ImageInput = Image.Image | str | Path | None


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
        """JSON-ready form (tags become ``{"label", "score"}`` objects)."""
        out = dict(self.outputs)
        if self.tags is not None:
            out["recognition"] = [{"label": name, "score": score} for name, score in self.tags]
        return out


def load_image(image: ImageInput) -> Image.Image | None:
    """A PIL RGB image from a PIL image or a file path, with a clear error when it is not an image."""
    if image is None or isinstance(image, Image.Image):
        return image.convert("RGB") if image is not None else None
    path = Path(image)
    if not path.is_file():
        raise MMTLError(f"image file not found: {path}")
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise MMTLError(f"{path} is not a readable image ({exc.__class__.__name__})") from None


class Predictor:
    """Runs a trained model on image-text pairs."""

    def __init__(self, components: Components, config: ExperimentConfig, device: torch.device,
                 precision: str = "fp32") -> None:
        self.components = components
        self.config = config
        self.device = device
        self.precision = precision
        self.model = components.model.to(device).eval()
        self.tasks = {task.name: task for task in components.tasks}

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", precision: str = "fp32") -> "Predictor":
        """Load a checkpoint directory (or a run directory holding ``checkpoints/LATEST``)."""
        checkpoint = resolve_checkpoint(path)
        config = load_config(checkpoint / CONFIG_FILE)
        components = components_from_meta(config, read_meta(checkpoint))
        load_weights(components.model, checkpoint)
        return cls(components, config, resolve_device(device), precision)

    def _task_names(self, tasks: Sequence[str] | None) -> list[str]:
        names = list(tasks) if tasks else list(self.tasks)
        unknown = [n for n in names if n not in self.tasks]
        if unknown:
            raise MMTLError(f"unknown task {', '.join(unknown)}; this model has: {', '.join(self.tasks)}")
        return names

    def predict(self, image: ImageInput = None, text: str | None = None,
                tasks: Sequence[str] | None = None) -> PredictionResult:
        """Predict one image-text pair; tasks whose required input is missing are skipped."""
        return self.predict_batch([image], [text], tasks)[0]

    @torch.no_grad()
    def predict_batch(self, images: Sequence[ImageInput], texts: Sequence[str | None],
                      tasks: Sequence[str] | None = None) -> list[PredictionResult]:
        """Predict a list of pairs in one batch (``images`` and ``texts`` are aligned; either may hold None)."""
        if len(images) != len(texts):
            raise MMTLError(f"got {len(images)} images but {len(texts)} texts")
        names = self._task_names(tasks)
        size = self.config.model.image.image_size
        examples = []
        for i, (image, text) in enumerate(zip(images, texts)):
            pil = load_image(image)
            if pil is None and not (text and text.strip()):
                raise MMTLError(f"pair {i}: give an image, a text, or both")
            pixels = to_uint8_tensor(resize_center_crop(pil, size)) if pil is not None else None
            ids = self.components.vocab.encode(text, self.config.model.text.context_length) if text else []
            examples.append(Example(str(i), pixels, ids, {}, {}))
        batch = Collator(self.components.tasks, size)(examples).to(self.device)
        with get_autocast(self.precision, self.device):
            outputs = self.model.predict(batch, names, self.config.eval)
        results = []
        for row, example in enumerate(examples):
            present = {"image": example.image is not None, "text": bool(example.text)}
            results.append(PredictionResult({
                name: outputs[name][row] for name in names
                if all(present[m] for m in self.tasks[name].required_inputs)
            }))
        return results
