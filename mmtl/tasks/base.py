"""The task interface. The training loop and the loader only ever talk to tasks through it."""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from data_pipelines.fields import AnnotationField
from mmtl.config import ModelConfig, NoSettings, TaskSettingsConfig, settings_of
from mmtl.models.fusion import Fused
from mmtl.registry import MODALITIES
from mmtl.text import Vocabulary


@dataclass
class TaskContext:
    """What tasks need to know about the data and the model."""

    classes: list[str]
    vocab: Vocabulary
    model: ModelConfig
    # recognition labels: "multi" (any number per sample, sigmoid) or "single" (exactly one, softmax),
    # from dataset.json's "label_mode"
    label_mode: str = "multi"
    # ExperimentConfig.task_settings: task registry key -> that task's section of settings
    task_settings: dict[str, TaskSettingsConfig] = field(default_factory=dict)


class Task:
    """Base class: a subclass registers under a key in ``mmtl.registry.TASKS``."""

    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]]  # modalities the task reads, e.g. ("image",) or ("image", "text")
    required_inputs: ClassVar[tuple[str, ...]]  # modalities without which the task cannot run
    # the annotation field the task learns and is scored against (what :meth:`reference` reads): its name and
    # kind (data_pipelines.fields), which is all converters, shard scans and inspect need to carry it
    reference_field: ClassVar[AnnotationField]
    # further annotation fields the task reads (a sample supervises it only when they are non-empty too)
    input_fields: ClassVar[tuple[AnnotationField, ...]] = ()
    # whether its references are free text that a decoder writes (their words join a compact vocabulary)
    writes_text: ClassVar[bool] = False
    # whether the task reads the data set's class list (dataset.json "classes"), which must then not be empty
    needs_classes: ClassVar[bool] = False
    primary_metric: ClassVar[str]  # the metric that decides whether the task improved
    # its metrics where lower is better (all others: higher is better), e.g. for Δm (mmtl.evaluation.delta)
    lower_is_better: ClassVar[tuple[str, ...]] = ()
    # metrics that describe how degenerate its outputs are, not how good: reported, never in Δm
    diagnostic_metrics: ClassVar[tuple[str, ...]] = ()
    # diversity metrics (higher: more diverse) whose fall far below the single-task model's is a collapse
    collapse_metrics: ClassVar[tuple[str, ...]] = ()
    # the task's own settings (``task_settings.<key>`` in the experiment config): a dataclass, validated
    # with the config like every component's (mmtl.config.settings_of)
    Settings: ClassVar[type] = NoSettings

    def __init__(self, context: TaskContext) -> None:
        self.context = context
        section = context.task_settings.get(self.name, TaskSettingsConfig())
        self.settings = settings_of(section, type(self), f"task_settings.{self.name}")

    @classmethod
    def annotation_fields(cls) -> tuple[AnnotationField, ...]:
        """The annotation fields the task reads: a sample supervises it when all of them are non-empty."""
        return (*cls.input_fields, cls.reference_field)

    def settings_dict(self) -> dict[str, Any]:
        """The task's resolved settings as a plain mapping (empty when it has none)."""
        return asdict(self.settings)

    def reads_tokens(self) -> bool:
        """Whether one of the task's inputs is a modality of vocabulary tokens (a document: what a decoder
        can copy, and what the text context may cut)."""
        return any(MODALITIES.get(modality).carries_tokens for modality in self.inputs)

    def target(self, annotation: dict[str, Any], rng: random.Random) -> Any | None:
        """Training target from one annotation (in loader workers), or None if unsupervised."""
        raise NotImplementedError

    def collate(self, targets: list[Any]) -> dict[str, torch.Tensor]:
        """Stack targets of the rows that have them."""
        raise NotImplementedError

    def build_head(self, config: ModelConfig) -> nn.Module:
        """The task's head module."""
        raise NotImplementedError

    def loss_count(self, target: dict[str, torch.Tensor]) -> torch.Tensor | int:
        """How many terms the task's loss averages over in a batch (rows; generation: target tokens).

        Data-parallel training weights each rank's loss by it, so that the gradient equals one
        process's on the global batch.
        """
        return target["index"].numel()

    def shared_head_key(self, config: ModelConfig) -> str | None:
        """Key of a head that this task shares with others under ``config`` (None: its own head).

        Tasks returning the same key get one head built by the first of them; each then gets
        :meth:`wrap_shared_head` of it as its own head.
        """
        return None

    def wrap_shared_head(self, shared: nn.Module) -> nn.Module:
        """This task's view of a shared head (its task-specific parameters live in the wrapper)."""
        return shared

    def loss(self, head: nn.Module, fused: Fused, target: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar loss of the head on the fused rows that carry this task's targets."""
        raise NotImplementedError

    def predict(self, head: nn.Module, fused: Fused, options: Any) -> list[Any]:
        """One prediction per row of ``fused``."""
        raise NotImplementedError

    def predict_rows(self, head: nn.Module, fused: Fused, options: Any,
                     annotations: Sequence[dict[str, Any]]) -> list[Any]:
        """One prediction per row, for tasks that also read each row's annotation (its raw ``document``,
        say) at prediction time; by default :meth:`predict` on the fused representation alone."""
        return self.predict(head, fused, options)

    def reference(self, annotation: dict[str, Any]) -> Any | None:
        """What a prediction is scored against, or None if the annotation lacks it."""
        raise NotImplementedError

    def score(self, predictions: Sequence[Any], references: Sequence[Any], threshold: float = 0.5) -> dict[str, float]:
        """Metrics (including ``primary_metric``) of predictions against references.

        Evaluation predicts at threshold 0 (scored outputs list every candidate with its score), so
        that ranking metrics see all scores; ``threshold`` is where set-valued metrics cut them.
        """
        raise NotImplementedError

    def score_against_data(self, predictions: Sequence[Any], annotations: Sequence[dict[str, Any]],
                           training: Sequence[dict[str, Any]]) -> dict[str, float]:
        """Metrics that also read each prediction's own annotation and the ``training`` split's annotations
        (what the model could have learned), added to :meth:`score`'s; none by default."""
        return {}

    def thresholded(self, prediction: Any, threshold: float) -> Any:
        """What a user sees at ``threshold`` of a prediction made at threshold 0 (default: the same)."""
        return prediction

    def fit_baseline(self, train_annotations: Sequence[dict[str, Any]]) -> Callable[[dict[str, Any]], Any]:
        """A trivial predictor (annotation -> prediction) fitted on training annotations."""
        raise NotImplementedError

    def format(self, prediction: Any) -> str:
        """Human-readable prediction."""
        return str(prediction)

    def format_reference(self, reference: Any) -> str:
        """Human-readable reference."""
        return str(reference)
