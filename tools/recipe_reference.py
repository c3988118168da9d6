"""The plain PyTorch reference of tools/bench_recipe.py: its own data reading, models and loop.

Independent of mmtl's loader, model and trainer on purpose: shard tars are read with ``tarfile``
and PIL into memory, and each task gets the simplest model on the same backbone:
  recognition    timm backbone + global average pool + linear (BCE summed over classes and averaged
                 over samples for multi-label, cross-entropy for single-label);
  captioning     timm feature-map tokens -> linear -> nn.TransformerDecoder (causal, teacher forcing);
  summarization  nn.TransformerEncoder over the document tokens -> nn.TransformerDecoder.
Only mmtl's Vocabulary (so token ids match) and its task objects (``reference``/``score``, so the
metrics are identical) are shared with mmtl.
"""
from __future__ import annotations

import io
import json
import math
import random
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

from mmtl.config import ExperimentConfig, selected
from mmtl.tasks.base import Task
from mmtl.tasks.generation import GenerationTask
from mmtl.text import PAD, UNK, BOS, EOS, Vocabulary

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")


class Clock(Protocol):
    """Where the parts of a training step end (tools/step_profile.PartClock); the plain run uses NO_CLOCK."""

    def new_step(self) -> None: ...

    def mark(self, part: str) -> None: ...


class _NoClock:
    def new_step(self) -> None:
        pass

    def mark(self, part: str) -> None:
        pass


NO_CLOCK: Clock = _NoClock()


@dataclass
class Sample:
    """One decoded sample: uint8 (3, S, S) image or None, and its annotation."""

    image: torch.Tensor | None
    annotation: dict[str, Any]


def decode_image(data: bytes, size: int) -> torch.Tensor:
    """Image bytes -> upright RGB, shorter side resized and centre-cropped to ``size``, CHW uint8."""
    image = Image.open(io.BytesIO(data))
    if image.format == "JPEG":
        image.draft("RGB", (size, size))
    image = ImageOps.exif_transpose(image).convert("RGB")
    image = ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def read_split(data_dir: str | Path, split: str, image_size: int, limit: int = 0) -> list[Sample]:
    """Every sample of ``split`` (in shard order), read straight from the tars listed in dataset.json."""
    data_dir = Path(data_dir)
    info = json.loads((data_dir / "dataset.json").read_text())
    samples: list[Sample] = []
    for shard in info["splits"][split]["shards"]:
        parts: dict[str, dict[str, bytes]] = {}
        with tarfile.open(data_dir / shard) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, suffix = Path(member.name).name.partition(".")
                parts.setdefault(key, {})[suffix.lower()] = tar.extractfile(member).read()
        for key, fields in parts.items():
            if "json" not in fields:
                continue
            image = next((fields[s] for s in IMAGE_SUFFIXES if s in fields), None)
            samples.append(Sample(None if image is None else decode_image(image, image_size), json.loads(fields["json"])))
            if limit and len(samples) >= limit:
                return samples
    return samples


def _pad(rows: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, ids in enumerate(rows):
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def _backbone(config: ExperimentConfig, num_classes: int = 0) -> nn.Module:
    import timm

    image = selected(config.model.image, "model.image")[1]
    return timm.create_model(image.timm_model, num_classes=num_classes, **image.timm_kwargs)


class Normalize(nn.Module):
    """uint8 pixels -> the backbone's normalised floats (its pretrained_cfg mean/std)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        cfg = backbone.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.5,) * 3)).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.5,) * 3)).view(1, 3, 1, 1) * 255)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (image.float() - self.mean) / self.std


def layer_options(config: ExperimentConfig) -> dict[str, Any]:
    """nn.Transformer*Layer arguments at the preset's width, heads, MLP ratio and dropout (pre-norm)."""
    m = config.model
    return {"d_model": m.width, "nhead": m.num_heads, "dim_feedforward": int(m.width * m.mlp_ratio),
            "dropout": m.dropout, "batch_first": True, "norm_first": True}


class TokenEmbedding(nn.Module):
    """Vocabulary ids -> embeddings plus learned positions."""

    def __init__(self, vocab_size: int, width: int, length: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width, padding_idx=PAD)
        self.position = nn.Parameter(torch.randn(length, width) * 0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids) + self.position[: ids.shape[1]]


class Decoder(nn.Module):
    """Token embedding + positions -> nn.TransformerDecoder (causal) over a memory -> vocabulary logits."""

    def __init__(self, vocab_size: int, config: ExperimentConfig) -> None:
        super().__init__()
        m = config.model
        self.max_length = m.decoder.max_length
        self.tokens = TokenEmbedding(vocab_size, m.width, m.decoder.max_length)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer_options(config)), m.decoder.depth)
        self.norm = nn.LayerNorm(m.width)
        self.out = nn.Linear(m.width, vocab_size)

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor, memory_pad: torch.Tensor | None) -> torch.Tensor:
        x = self.tokens(tokens)
        causal = torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool, device=tokens.device).triu(1)
        x = self.decoder(x, memory, tgt_mask=causal, tgt_is_causal=True, tgt_key_padding_mask=tokens == PAD,
                         memory_key_padding_mask=memory_pad)
        return self.out(self.norm(x))

    @torch.no_grad()
    def greedy(self, memory: torch.Tensor, memory_pad: torch.Tensor | None, max_length: int) -> torch.Tensor:
        """Greedy decoding from BOS, without a cache (the models are small); rows stop at EOS."""
        tokens = torch.full((memory.shape[0], 1), BOS, dtype=torch.long, device=memory.device)
        done = torch.zeros(memory.shape[0], dtype=torch.bool, device=memory.device)
        for _ in range(min(max_length, self.max_length) - 1):
            nxt = self.forward(tokens, memory, memory_pad)[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
            tokens = torch.cat([tokens, nxt[:, None]], 1)
            done |= nxt == EOS
            if done.all():
                break
        return tokens[:, 1:]


class RecognitionReference(nn.Module):
    """timm backbone with its own global average pool + linear classifier."""

    def __init__(self, config: ExperimentConfig, num_classes: int) -> None:
        super().__init__()
        self.backbone = _backbone(config, num_classes)
        self.normalize = Normalize(self.backbone)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(image))


class CaptionReference(nn.Module):
    """timm feature map -> one token per position (linear + learned position) -> text decoder."""

    def __init__(self, config: ExperimentConfig, vocab_size: int) -> None:
        super().__init__()
        size, width = config.model.image.image_size, config.model.width
        self.backbone = _backbone(config)
        self.normalize = Normalize(self.backbone)
        with torch.no_grad():
            self.backbone.eval()
            tokens = self.backbone.forward_features(torch.zeros(1, 3, size, size)).flatten(2).shape[-1]
            self.backbone.train()
        self.proj = nn.Linear(self.backbone.num_features, width)
        self.position = nn.Parameter(torch.randn(tokens, width) * 0.02)
        self.decoder = Decoder(vocab_size, config)

    def memory(self, image: torch.Tensor) -> tuple[torch.Tensor, None]:
        features = self.backbone.forward_features(self.normalize(image)).flatten(2).transpose(1, 2)
        return self.proj(features) + self.position, None


class SummaryReference(nn.Module):
    """nn.TransformerEncoder over the document tokens -> text decoder."""

    def __init__(self, config: ExperimentConfig, vocab_size: int) -> None:
        super().__init__()
        m = config.model
        self.tokens = TokenEmbedding(vocab_size, m.width, m.text.context_length)
        # as deep as mmtl's text encoder plus its fusion, the layers a document passes through there
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer_options(config)),
                                             selected(m.text, "model.text")[1].depth + m.fusion.depth,
                                             enable_nested_tensor=False)
        self.decoder = Decoder(vocab_size, config)

    def memory(self, document: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pad = document == PAD
        return self.encoder(self.tokens(document), src_key_padding_mask=pad), pad


# task key -> reference model class (its second argument: classes for recognition, vocabulary size otherwise)
REFERENCE_MODELS: dict[str, type[nn.Module]] = {
    "recognition": RecognitionReference, "captioning": CaptionReference, "summarization": SummaryReference,
}


@dataclass
class Prepared:
    """A task's training or evaluation rows: model inputs, targets and scoring references."""

    inputs: list[Any]
    targets: list[Any]
    references: list[Any] = field(default_factory=list)


def prepare(task: Task, samples: list[Sample], vocab: Vocabulary, config: ExperimentConfig,
            label_index: dict[str, int]) -> Prepared:
    """Rows of ``samples`` that supervise ``task``: (input, target choices, reference)."""
    out = Prepared([], [])
    for sample in samples:
        reference = task.reference(sample.annotation)
        if reference is None:
            continue
        if "text" in task.required_inputs:
            document = sample.annotation.get("document") or ""
            ids = vocab.encode(document, config.model.text.context_length) or [UNK]
            out.inputs.append(ids)
        elif sample.image is None:
            continue
        else:
            out.inputs.append(sample.image)
        if not isinstance(task, GenerationTask):  # recognition: class ids
            out.targets.append([label_index[name] for name in reference if name in label_index])
        else:
            out.targets.append([vocab.encode(r, config.model.decoder.max_length, bos=True, eos=True) for r in reference])
        out.references.append(reference)
    return out


class Reference:
    """One reference model for one task, its batching, loss and greedy prediction."""

    def __init__(self, task: Task, vocab: Vocabulary, config: ExperimentConfig,
                 device: torch.device = torch.device("cpu")) -> None:
        self.task, self.vocab, self.config, self.device = task, vocab, config, device
        self.classes = list(task.context.classes)
        self.single = task.context.label_mode == "single"
        if task.name not in REFERENCE_MODELS:
            raise ValueError(f"no plain reference for task {task.name!r}; have {', '.join(REFERENCE_MODELS)}")
        self.generates = isinstance(task, GenerationTask)
        self.model: nn.Module = REFERENCE_MODELS[task.name](config, vocab.size if self.generates else len(self.classes))
        self.model.to(device)

    def _inputs(self, rows: list[Any]) -> torch.Tensor:
        return (_pad(rows) if "text" in self.task.required_inputs else torch.stack(rows)).to(self.device)

    def loss(self, inputs: list[Any], targets: list[Any], rng: random.Random,
             clock: Clock | None = None) -> torch.Tensor:
        """The simplest loss of one batch (targets: label ids, or a list of token-id choices)."""
        clock = clock or NO_CLOCK
        x = self._inputs(inputs)
        clock.mark("to_device")
        if not self.generates:
            logits = self.model(x)
            clock.mark("forward")
            return recognition_loss(logits, targets, self.single)
        tokens = _pad([rng.choice(choices) for choices in targets]).to(self.device)
        memory, memory_pad = self.model.memory(x)
        logits = self.model.decoder(tokens[:, :-1], memory, memory_pad)
        clock.mark("forward")
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), ignore_index=PAD)

    @torch.no_grad()
    def predict(self, inputs: list[Any]) -> list[Any]:
        """Predictions in the task's own format (recognition: every class with its score)."""
        x = self._inputs(inputs)
        if not self.generates:
            return recognition_predictions(self.model(x), self.classes, self.single)
        memory, memory_pad = self.model.memory(x)
        ids = self.model.decoder.greedy(memory, memory_pad, self.config.eval.generation.max_length)
        return [self.vocab.decode(row) for row in ids.tolist()]


def recognition_loss(logits: torch.Tensor, targets: list[list[int]], single: bool) -> torch.Tensor:
    """The plain recognition loss of one batch (targets: class ids per row): cross-entropy on the first id
    (single-label), or binary cross-entropy summed over the classes and averaged over the rows (multi-label)."""
    if single:
        return F.cross_entropy(logits, torch.tensor([t[0] for t in targets], device=logits.device))
    multi_hot = torch.zeros_like(logits)
    for row, ids in enumerate(targets):
        multi_hot[row, ids] = 1.0
    return F.binary_cross_entropy_with_logits(logits, multi_hot, reduction="sum") / len(targets)


def next_rows(order: list[int], rng: random.Random, count: int, batch: int) -> list[int]:
    """The next ``batch`` row indices of ``order`` (taken from it in place), refilled with a fresh permutation
    of the ``count`` rows whenever fewer than a batch are left."""
    if len(order) < batch:
        order += rng.sample(range(count), count)
    rows = order[:batch]
    del order[:batch]
    return rows


def recognition_predictions(logits: torch.Tensor, classes: list[str], single: bool) -> list[Any]:
    """Recognition predictions in the task's format: the top 5 classes by softmax (single-label), or every
    class by sigmoid (multi-label), each with its score."""
    logits = logits.float()
    if single:
        top = logits.softmax(-1).cpu().topk(min(5, logits.shape[-1]), dim=-1)
        return [[(classes[i], float(p)) for p, i in zip(ps.tolist(), ix.tolist())]
                for ps, ix in zip(top.values, top.indices)]
    probs = torch.sigmoid(logits).cpu()
    return [[(classes[i], float(row[i])) for i in torch.argsort(row, descending=True).tolist()] for row in probs]


def lr_factor(step: int, steps: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then cosine / linear decay to zero or constant."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0 - progress if schedule == "linear" else 1.0


@dataclass
class ReferenceRun:
    """What one reference training produced."""

    metrics: dict[str, float]
    seconds: float  # the training loop's wall time
    losses: list[float]
    cpu_seconds: float  # the same loop's CPU seconds of this process


class ReferenceTraining:
    """The reference's training, one step at a time (``step``), then its score (``score``). Seed torch
    before building ``reference`` (its initial weights); ``seed`` seeds the row order and target choices.
    ``clock`` (tools/step_profile.PartClock) is told where each step's parts end; the plain run uses none.
    """

    def __init__(self, reference: Reference, train_rows: Prepared, steps: int, seed: int,
                 clock: Clock | None = None) -> None:
        self.rng = random.Random(seed)
        self.reference, self.rows, self.clock = reference, train_rows, clock or NO_CLOCK
        self.model, config = reference.model, reference.config
        self.cfg, self.batch = config.train, config.data.batch_size
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        warmup = min(self.cfg.warmup_steps, max(1, steps // 10))
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, steps, warmup, self.cfg.schedule))
        self.order: list[int] = []
        self.losses: list[float] = []
        self.model.train()

    def step(self) -> None:
        """One AdamW step on the next ``data.batch_size`` rows (a fresh permutation per epoch)."""
        clock = self.clock
        clock.new_step()
        rows = next_rows(self.order, self.rng, len(self.rows.inputs), self.batch)
        inputs, targets = [self.rows.inputs[i] for i in rows], [self.rows.targets[i] for i in rows]
        clock.mark("data")
        loss = self.reference.loss(inputs, targets, self.rng, clock)
        clock.mark("loss")
        self.optimizer.zero_grad(set_to_none=True)
        clock.mark("prepare")
        loss.backward()
        clock.mark("backward")
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        clock.mark("clip_check")
        self.optimizer.step()
        clock.mark("optimizer")
        self.schedule.step()
        clock.mark("schedule")
        self.losses.append(float(loss.detach()))

    def score(self, eval_rows: Prepared) -> dict[str, float]:
        """The task's metrics of the greedy predictions on ``eval_rows``."""
        reference, config = self.reference, self.reference.config
        self.model.eval()
        predictions: list[Any] = []
        size = config.eval.batch_size
        for start in range(0, len(eval_rows.inputs), size):
            predictions += reference.predict(eval_rows.inputs[start:start + size])
        return reference.task.score(predictions, eval_rows.references, config.eval.threshold)


def train_reference(task: Task, vocab: Vocabulary, config: ExperimentConfig, train_rows: Prepared,
                    eval_rows: Prepared, steps: int, seed: int,
                    device: torch.device = torch.device("cpu")) -> ReferenceRun:
    """Train the reference for ``steps`` AdamW steps of ``config.data.batch_size`` rows (fp32, on ``device``);
    score on ``eval_rows``."""
    torch.manual_seed(seed)  # the model's initial weights
    training = ReferenceTraining(Reference(task, vocab, config, device), train_rows, steps, seed)
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        training.step()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return ReferenceRun(training.score(eval_rows), seconds, training.losses, cpu)
