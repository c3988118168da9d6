"""The model side of fine-tuning (``mmtl finetune``): what a trained model gets when it learns new
modalities and tasks, kept off the plain model as a :class:`~mmtl.models.extension.ModelExtension`.

Strategies (``finetune.strategy``): ``frozen`` turns off the gradients of every trained tensor and
keeps the trained modules in eval mode (their BatchNorm statistics stay put); ``lora`` also wraps
the linear layers of the fusion and of the old heads in adapters (:class:`AdapterLinear`) that
are switched on only for the new modalities and tasks; ``full`` trains everything, the trained
tensors at a lower learning rate. A new encoder may start from a trained one (``init_from``), and
an alignment loss may pull a new modality's representation toward the one it stands for.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Collection, Hashable, Iterator, Sequence

import torch
from torch import nn

from mmtl.config import ExperimentConfig
from mmtl.errors import MMTLError
from mmtl.models.extension import ModelExtension
from mmtl.models.layers import MLP, Attention
from mmtl.models.model import MultiTaskModel
from mmtl.models.sharing import LoRALinear

ADAPTER = "finetune"  # key of the single adapter of an AdapterLinear


class AdapterLinear(LoRALinear):
    """A fine-tuning LoRA adapter on a trained linear layer (``mmtl finetune --strategy lora``).

    It is off unless :func:`set_adapters` switches it on (:class:`Adaptation` does so only for the new
    modalities and tasks), so every other input computes exactly what the trained layer did.
    """

    active = False

    def __init__(self, base: nn.Module, rank: int) -> None:
        super().__init__(base, [ADAPTER], rank)
        # not under ``per_task``: the adapter belongs to the new inputs and tasks, not to one old task
        self.adapter = self.per_task.pop(ADAPTER)
        del self.per_task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y + self.delta(x, self.adapter) if self.active else y


def add_adapters(root: nn.Module, rank: int) -> int:
    """Wrap every linear layer of the attention and feed-forward blocks under ``root`` in an
    :class:`AdapterLinear`; returns how many were wrapped."""
    owners = [m for m in root.modules() if isinstance(m, (Attention, MLP))]
    count = 0
    for owner in owners:
        for name, child in list(owner.named_children()):
            if isinstance(child, (nn.Linear, LoRALinear)) and not isinstance(child, AdapterLinear):
                setattr(owner, name, AdapterLinear(child, rank))
                count += 1
    return count


def set_adapters(module: nn.Module, active: bool) -> None:
    """Switch every :class:`AdapterLinear` under ``module`` on or off."""
    for sub in module.modules():
        if isinstance(sub, AdapterLinear):
            sub.active = active


class Adaptation(ModelExtension):
    """Fine-tuning's state on a model: the modalities and tasks whose computations run with adapters
    on (``adapted``), parts kept in eval mode (``frozen_parts``), learning-rate factors by parameter-name
    prefix (``lr_scales``) and extra losses (``auxiliary``)."""

    def __init__(self) -> None:
        self.adapted: frozenset[str] = frozenset()
        self.frozen_parts: list[str] = []
        self.lr_scales: dict[str, float] = {}
        self.auxiliary: dict[str, nn.Module] = {}

    def variant(self, modalities: Sequence[str], task: str | None) -> Hashable:
        """Whether the adapters take part in fusing ``modalities`` for ``task`` (None: the model has none)."""
        if not self.adapted:
            return None
        return task in self.adapted or any(m in self.adapted for m in modalities)

    @contextmanager
    def applied(self, modules: Sequence[nn.Module], variant: Hashable) -> Iterator[None]:
        """Switch the adapters inside ``modules`` on for the duration when ``variant`` is True."""
        if not variant:
            yield
            return
        for module in modules:
            set_adapters(module, True)
        try:
            yield
        finally:
            for module in modules:
                set_adapters(module, False)

    def objectives(self) -> list[str]:
        return list(self.auxiliary)

    def losses(self, model: nn.Module, batch: Any, cache: dict) -> dict[str, torch.Tensor]:
        out = {}
        for name, objective in self.auxiliary.items():
            loss = objective(model, batch, cache)
            if loss is not None:
                out[name] = loss
        return out

    def after_train(self, model: nn.Module, mode: bool) -> None:
        """Frozen parts stay in eval mode, so their BatchNorm statistics do not move either."""
        for name in self.frozen_parts:
            model.get_submodule(name).train(False)

    def lr_scale(self, name: str) -> float:
        """``lr_scales`` of the longest prefix of ``name`` (default 1)."""
        matches = [prefix for prefix in self.lr_scales if name == prefix or name.startswith(prefix + ".")]
        return self.lr_scales[max(matches, key=len)] if matches else 1.0


class Alignment(nn.Module):
    """Pulls the pooled representation of ``modality`` toward that of ``paired`` on rows that carry both
    (mean squared error against the paired one, which gets no gradient), scaled by ``weight``."""

    def __init__(self, modality: str, paired: str, weight: float) -> None:
        super().__init__()
        self.modality, self.paired, self.weight = modality, paired, weight

    def forward(self, model: nn.Module, batch: Any, cache: dict) -> torch.Tensor | None:
        if self.modality not in batch.inputs:
            return None
        _, paired_present = model.modalities[self.paired].batch_input(batch)
        both = (batch.inputs[self.modality].present & paired_present).float()
        pooled = model.fuse(batch, (self.modality,), cache).pooled.float()
        with torch.no_grad():
            target = model.fuse(batch, (self.paired,), {}).pooled.float()
        error = (pooled - target).pow(2).mean(-1)
        return self.weight * (error * both).sum() / both.sum().clamp_min(1.0)


def transplant(source: nn.Module, target: nn.Module) -> int:
    """Copy ``source``'s tensors into ``target`` where names and shapes match; a convolution kernel whose
    input channels differ gets the source kernel summed over its channels (e.g. RGB -> one-channel maps)
    when the target has one input channel. Returns how many tensors were copied."""
    own, copied = target.state_dict(), 0
    with torch.no_grad():
        for key, tensor in source.state_dict().items():
            if key not in own:
                continue
            if own[key].shape == tensor.shape:
                own[key].copy_(tensor)
            elif tensor.ndim == 4 and own[key].shape[1] == 1 and own[key].shape[0] == tensor.shape[0] \
                    and own[key].shape[2:] == tensor.shape[2:]:
                own[key].copy_(tensor.sum(1, keepdim=True))
            else:
                continue
            copied += 1
    return copied


def adapt(model: MultiTaskModel, config: ExperimentConfig, loaded: Collection[str]) -> set[str]:
    """Apply ``config.finetune`` to ``model``, whose tensors named in ``loaded`` hold the trained base
    model; returns the names of the tensors that are new or trained (what a delta checkpoint keeps)."""
    base_tensors = {id(t) for k, t in model.state_dict(keep_vars=True).items() if k in loaded}
    spec = config.finetune
    for name in spec.add_modalities:
        source = config.model.modalities[name].init_from
        if source:
            if source not in model.encoders or source in spec.add_modalities:
                raise MMTLError(f"model.modalities.{name}.init_from: the base model has no modality {source!r}")
            transplant(model.encoders[source], model.encoders[name])
    adaptation = Adaptation()
    old_modules = [f"encoders.{m}" for m in model.encoders if m not in spec.add_modalities]
    old_modules += ["fusion", "shared_heads", *(f"heads.{t}" for t in model.heads if t not in spec.add_tasks)]
    if spec.strategy == "full":
        adaptation.lr_scales = {name: spec.old_lr_scale for name, p in model.named_parameters()
                                if id(p) in base_tensors}
    else:
        for param in model.parameters():
            param.requires_grad_(id(param) not in base_tensors)
        adaptation.frozen_parts = [name for name in old_modules if len(list(model.get_submodule(name).parameters()))]
    if spec.strategy == "lora":
        for name in old_modules[old_modules.index("fusion"):]:
            add_adapters(model.get_submodule(name), spec.lora_rank)
        adaptation.adapted = frozenset([*spec.add_modalities, *spec.add_tasks])
    if spec.align_weight > 0:
        for name in spec.add_modalities:
            paired = model.modalities[name].stands_for
            if paired:
                adaptation.auxiliary[f"align_{name}"] = Alignment(name, paired, spec.align_weight)
    model.extension = adaptation
    if spec.strategy == "full":  # every tensor may move (normalisation statistics too): all of them are new
        return set(model.state_dict())
    return {k for k, t in model.state_dict(keep_vars=True).items() if id(t) not in base_tensors}
