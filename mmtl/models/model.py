"""The multi-task model: modality encoders -> fusion (shared hard, soft or hybrid) -> one head per task.

Tasks declare which modalities they read. The model encodes each needed modality once per
batch and fuses each distinct combination once, so recognition and captioning (image only)
share one fusion pass, and summarization (image + document) reuses the same image tokens.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
from torch import nn

from data_pipelines.batch import SHARED_OUTPUTS, Batch
from data_pipelines.modalities import model_modalities
from mmtl.config import ModelConfig
from mmtl.flop_count import count_flops
from mmtl.models.encoders import Stream
from mmtl.models.fusion import Fused, with_inputs
from mmtl.models.layers import find_units
from mmtl.models.seeding import seeded_part
from mmtl.models.extension import ModelExtension
from mmtl.models.sharing import PER_TASK, build_fusion
from mmtl.registry import FUSIONS
from mmtl.text import Vocabulary


class MultiTaskModel(nn.Module):
    """Encoders, fusion and task heads assembled from a ModelConfig and a list of tasks."""

    # leave a modality that no row of a batch carries out of the fusion (see ``streams``); sharded
    # training (mmtl.training.fsdp) turns it off, since every rank must run the same encoders
    skip_absent_modalities = True

    def __init__(self, config: ModelConfig, tasks: Sequence[Any], vocab: Vocabulary) -> None:
        super().__init__()
        self.config = config
        self.vocab = vocab
        self.tasks = {task.name: task for task in tasks}
        # each part starts from its own seed (mmtl.models.seeding): the same start whatever else the model has
        base_seed = torch.initial_seed()
        # one registered unit per modality (image, text, then model.modalities), each with its encoder
        self.modalities = model_modalities(config)
        self.encoders = nn.ModuleDict()
        for name, unit in self.modalities.items():
            with seeded_part(base_seed, f"encoder/{name}"):
                self.encoders[name] = unit.build_encoder(vocab)
        # modality -> the modalities that take its place for the tasks reading it, when a batch carries them
        self.substitutes: dict[str, list[str]] = {}
        for name, unit in self.modalities.items():
            if unit.stands_for:
                self.substitutes.setdefault(unit.stands_for, []).append(name)
        # what a user of the model adds to it (see ModelExtension); the default changes nothing
        self.extension = ModelExtension()
        with seeded_part(base_seed, "fusion"):
            self.fusion = build_fusion(config, list(self.tasks))
        keep_inputs = config.fusion.keep_inputs and not getattr(FUSIONS.get(config.fusion.name),
                                                                 "tokens_include_inputs", False)
        self.input_norm = nn.LayerNorm(config.width) if keep_inputs else None
        # heads that several tasks use (e.g. one text decoder for all generation tasks): owned here,
        # each task's entry in ``heads`` holds only its own parameters and refers to the shared one
        self.shared_heads = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self._build_heads(config, tasks, base_seed)

    def _build_heads(self, config: ModelConfig, tasks: Sequence[Any], base_seed: int) -> None:
        """Each task's head (and the heads tasks share), each from its own seed."""
        for task in tasks:
            key = task.shared_head_key(config)
            if key is None:
                with seeded_part(base_seed, f"head/{task.name}"):
                    self.heads[task.name] = task.build_head(config)
                continue
            if key not in self.shared_heads:
                with seeded_part(base_seed, f"shared_head/{key}"):
                    self.shared_heads[key] = task.build_head(config)
            with seeded_part(base_seed, f"head/{task.name}"):
                self.heads[task.name] = task.wrap_shared_head(self.shared_heads[key])

    def fuse(self, batch: Batch, modalities: tuple[str, ...], cache: dict, task: str | None = None) -> Fused:
        """Fused representation of ``modalities``, memoised in ``cache`` for this batch.

        With task-specific sharing (soft, hybrid) the representation depends on ``task`` (None:
        the first task); with hard sharing every task reading ``modalities`` gets the same one.
        """
        task_specific = getattr(self.fusion, "task_specific", False)
        if task_specific:
            task = task or next(iter(self.tasks))
        variant = self.extension.variant(modalities, task)
        key = (modalities, task) if task_specific else modalities
        key = key if variant is None else (key, variant)
        if key not in cache:
            streams = self.streams(batch, modalities, cache)
            with self.extension.applied([self.fusion], variant):
                outputs = self.fusion(streams, [task]) if task_specific else {None: self.fusion(streams)}
            if self.input_norm is not None:
                outputs = with_inputs(outputs, streams, self.input_norm)
            for name, fused in outputs.items():
                if SHARED_OUTPUTS in cache:
                    fused = _cut(fused, cache[SHARED_OUTPUTS])
                own = (modalities, name) if task_specific else modalities
                cache[own if variant is None else (own, variant)] = fused
        return cache[key]

    def streams(self, batch: Batch, modalities: tuple[str, ...], cache: dict) -> list[Stream]:
        """The encoded streams of ``modalities``, each encoded once per batch (memoised in ``cache``).

        A modality that no row of the batch carries is left out (with ``skip_absent_modalities``),
        unless that leaves nothing: every row would only mask its tokens out, and encoding blank
        images would cost time and feed blank-image statistics to the encoder's BatchNorm layers.
        """
        carried = [m for m in modalities if not (self.skip_absent_modalities and self.modalities[m].rows(batch) == 0)]
        streams: list[Stream] = []
        for modality in carried or modalities:
            if modality not in cache:
                data, present = self.modalities[modality].batch_input(batch)
                cache[modality] = dataclasses.replace(self.encoders[modality](data, present), modality=modality)
            streams.append(cache[modality])
        return streams

    def task_inputs(self, task: Any, batch: Batch) -> tuple[str, ...]:
        """The modalities ``task`` reads from ``batch``: its declared inputs, each replaced by the
        modalities standing for it that the batch carries (kept beside them when only some rows do)."""
        out: list[str] = []
        for modality in task.inputs:
            present = [s for s in self.substitutes.get(modality, ()) if s in batch.inputs]
            partial = any(batch.inputs[s].rows < len(batch) for s in present)
            out.extend(([modality] if partial or not present else []) + present)
        return tuple(out)

    def has_inputs(self, task: Any, present: set[str]) -> bool:
        """Whether a row with the modalities ``present`` can run ``task`` (directly or through a substitute)."""
        return all(m in present or any(s in present for s in self.substitutes.get(m, ())) for m in task.required_inputs)

    def train(self, mode: bool = True) -> "MultiTaskModel":
        """Set training mode, then let the extension adjust it (e.g. keep frozen parts in eval mode)."""
        super().train(mode)
        self.extension.after_train(self, mode)
        return self

    def lr_scale_of(self, name: str) -> float:
        """Learning-rate factor of parameter ``name`` (read by ``build_optimizer``; the extension's, default 1)."""
        return self.extension.lr_scale(name)

    def units(self) -> list[nn.Module]:
        """The blocks to compile, checkpoint (activations) or shard one by one (see ``layers.find_units``)."""
        return find_units(self)

    def objectives(self) -> list[str]:
        """Names of every loss ``forward`` can return: the tasks, then the extension's."""
        return [*self.tasks, *self.extension.objectives()]

    def forward(self, batch: Batch, cache: dict | None = None) -> dict[str, torch.Tensor]:
        """Loss of every task that has targets in ``batch`` (``cache``: see :meth:`fuse` and SHARED_OUTPUTS)."""
        cache = {} if cache is None else cache
        losses = {}
        for name, target in batch.targets.items():
            task = self.tasks[name]
            inputs = self.task_inputs(task, batch)
            fused = self.fuse(batch, inputs, cache, name).select(target["index"])
            with self.extension.applied([self.heads[name], self.shared_heads], self.extension.variant(inputs, name)):
                losses[name] = task.loss(self.heads[name], fused, target)
        losses.update(self.extension.losses(self, batch, cache))
        return losses

    @torch.no_grad()
    def predict(self, batch: Batch, task_names: Sequence[str], options: Any = None) -> dict[str, list[Any]]:
        """Predictions of each named task for every row of ``batch``."""
        cache: dict = {}
        out = {}
        for name in task_names:
            inputs = self.task_inputs(self.tasks[name], batch)
            fused = self.fuse(batch, inputs, cache, name)
            with self.extension.applied([self.heads[name], self.shared_heads], self.extension.variant(inputs, name)):
                annotations = batch.annotations or [{} for _ in range(len(batch))]
                out[name] = self.tasks[name].predict_rows(self.heads[name], fused, options, annotations)
        return out

    def parameter_report(self) -> dict[str, int]:
        """Parameters shared by all tasks and those specific to each task (``task:NAME``), plus ``total``.

        Task-specific: a task's head, and anything under a ``per_task.NAME`` module (soft-sharing
        trunks, LoRA adapters, expert gates). Everything else (encoders, fusion trunk, shared
        heads, cross-stitch units) is shared.
        """
        report = {"shared": 0, **{f"task:{name}": 0 for name in self.tasks}}
        for part, task, count in self.parameter_parts():
            report["shared" if task is None else f"task:{task}"] += count
        report["total"] = sum(p.numel() for p in self.parameters())
        return report

    def parameter_parts(self) -> list[tuple[str, str | None, int]]:
        """(part, task or None if shared, parameter count) for every part of the model, e.g.
        ("fusion", None, n), ("fusion", "captioning", n_adapters), ("heads.captioning", "captioning", n)."""
        counts: dict[tuple[str, str | None], int] = {}
        for name, param in self.named_parameters():
            parts = name.split(".")
            part = ".".join(parts[:2]) if parts[0] in ("encoders", "heads", "shared_heads") else parts[0]
            task = parts[1] if parts[0] == "heads" else None
            if PER_TASK in parts:
                task = parts[parts.index(PER_TASK) + 1]
            counts[(part, task)] = counts.get((part, task), 0) + param.numel()
        return [(part, task, n) for (part, task), n in counts.items()]

    def forward_flops(self, batch: Batch) -> dict[str, int]:
        """FLOPs of one training forward per task on ``batch`` (encoders, fusion and head that the task
        runs, counted by :func:`mmtl.flop_count.count_flops`; nothing is shared between the tasks' counts)."""
        flops = {}
        for name, target in batch.targets.items():
            single = dataclasses.replace(batch, targets={name: target})
            with torch.no_grad():
                flops[name] = count_flops(lambda: self(single))
        return flops


def _cut(fused: Fused, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> Fused:
    """``fused`` with its differentiable tensors replaced by detached leaves; records (original, leaf)."""
    out = []
    for tensor in (fused.tokens, fused.pooled):
        if tensor.requires_grad:
            leaf = tensor.detach().requires_grad_()
            pairs.append((tensor, leaf))
            tensor = leaf
        out.append(tensor)
    return Fused(out[0], fused.valid, out[1], fused.ids, fused.document)
