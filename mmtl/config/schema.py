"""The experiment schema: one dataclass per config section; allowed values are declared on the fields.

The ``model`` section is in :mod:`mmtl.config.model`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mmtl.config.fields import (
    AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Number, Range, between, check_ranges, choice, setting,
)
from mmtl.config.components import as_tree
from mmtl.config.model import ModelConfig
from mmtl.config.slots import Slot


@dataclass
class SyntheticConfig:
    """Size and difficulty of the built-in "shapes world" data set (used by ``mmtl quickstart``)."""

    train: int = setting(3000, range=between(0, 100_000_000), help="training samples")
    val: int = setting(200, range=between(0, 100_000_000), help="validation samples")
    test: int = setting(200, range=between(0, 100_000_000), help="test samples")
    seed: int = 0
    difficulty: str = choice("medium", "easy", "medium", "hard")
    image_size: int = setting(64, range=between(1, 16_384))
    shard_size: int = setting(1000, range=between(1, 100_000_000), help="samples per shard")


@dataclass
class SourceConfig:
    """One training source of ``data.sources``: a shard directory, its split, the tasks it feeds, a weight."""

    # a shard directory, a .tar, a brace pattern, a pipe: command, or a list of tar files
    path: str | list[str] = ""
    split: str | None = None  # None: data.train_split
    tasks: list[str] | None = None  # None: every task of the run it has annotations for
    # data.mixing=fixed: sources are drawn in proportion to their weights
    weight: float = setting(1.0, range=NON_NEGATIVE)
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
    batch_size: int = setting(32, range=between(1, 1_000_000))
    num_workers: int = setting(0, range=NON_NEGATIVE)
    shuffle_buffer: int = setting(1000, range=NON_NEGATIVE)
    # stop when more than this fraction of the samples seen (after 100) was corrupt and skipped
    max_corrupt_fraction: float = setting(0.01, range=Range(0, 1))
    # a decoded image with more pixels than this counts as a decompression bomb and is skipped
    max_image_pixels: int = setting(64_000_000, range=Range(0, low_open=True))
    # decoded training images kept in memory (over all workers) so that a small set is decoded once, not
    # every epoch; a set that does not fit is not cached (0: off). The batches are the same either way.
    decoded_cache_mb: int = setting(256, range=NON_NEGATIVE,
                                    help="MB of decoded training images kept for later epochs (0: off)")
    # whole training shards kept in memory (over all workers) after their first read, so that later epochs
    # of a small set skip the tar files; a set that does not fit is not held (0: off). Same batches either way.
    shard_cache_mb: int = setting(256, range=NON_NEGATIVE,
                                  help="MB of training shards kept in memory for later epochs (0: off)")
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # training stream: shards resampled forever, or epochs (new shard order each; every sample once
    # per epoch over all ranks and workers)
    mode: str = choice("resampled", "resampled", "epoch")
    # several training sources (empty: data.path alone), mixed by a strategy (data_pipelines/mixing.py)
    sources: list[SourceConfig] = field(default_factory=list)
    mixing: str = choice("natural", "natural", "proportional", "temperature", "fixed", "round_robin")
    mixing_temperature: float = setting(2.0, range=POSITIVE)  # mixing=temperature: task shares p_t ∝ n_t^(1/T)
    # >0: batches drawn from a buffer of this many batches grouped by document length (less padding)
    length_buckets: int = setting(0, range=NON_NEGATIVE)
    # a pipe: source runs a shell command: allowed only when this is set in your own config or on the
    # command line (never from a checkpoint's config); each command is logged as it starts
    allow_pipe: bool = setting(False, help="allow pipe: sources, which run a shell command")

    def __post_init__(self) -> None:
        self.path = join_shard_list(self.path)


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of a training run."""

    steps: int = setting(560, range=POSITIVE)
    lr: float = setting(2e-3, range=Range(0, 100, low_open=True))
    weight_decay: float = setting(0.05, range=NON_NEGATIVE)
    warmup_steps: int = setting(30, range=NON_NEGATIVE)
    schedule: str = choice("cosine", "cosine", "linear", "constant")
    grad_clip: float = setting(1.0, range=Range(0, low_open=True))
    # global: one norm over all parameters; owner: the shared parameters and each task's head are clipped
    # apart, so one task's large gradient does not shrink another task's head updates
    grad_clip_scope: str = choice("global", "global", "owner")
    # auto: bf16 autocast on a GPU, fp32 on a CPU; pure_bf16: bf16 weights, gradients and optimiser state
    precision: str = choice("auto", "auto", "fp32", "bf16", "fp16", "pure_bf16")
    device: str = "auto"
    # micro-batches of data.batch_size per optimiser step (global batch = batch x accum x ranks)
    grad_accum: int = setting(1, range=POSITIVE)
    # torch.compile every transformer block and the image backbone (the first steps compile)
    compile: bool = False
    # recompute encoder, fusion and decoder activations in the backward pass (less memory, ~30% more compute)
    grad_checkpointing: bool = False
    # exponential moving average of the weights (0: off); checkpoints then hold ema.safetensors,
    # which evaluation and inference use
    ema_decay: float = setting(0.0, range=Range(0, 1, high_open=True))
    # a step whose loss or gradient is not finite is skipped; this many in a row stop the run
    max_nonfinite_steps: int = setting(5, range=POSITIVE)
    log_every: int = setting(10, range=AT_LEAST_ONE)
    # per-task gradient norms and cosines on the shared parameters cost one backward per task for
    # loss-weighting balancers: measured on log steps that fall every this many steps (0: never; never
    # with a single task)
    monitor_every: int = setting(50, range=NON_NEGATIVE)
    checkpoint_every: int = setting(200, range=NON_NEGATIVE)
    keep_checkpoints: int = setting(3, range=POSITIVE)
    progress: bool = True
    # start over in an output_dir that already holds a run (its log, plots and checkpoints are deleted)
    overwrite: bool = False
    # validate on data.val_split every this many steps and at the last step (0: never); see ValidationConfig
    eval_every: int = setting(0, range=NON_NEGATIVE)
    # under torchrun: shard parameters, gradients and optimiser state over the ranks with FSDP2
    # (loss-weighting balancers only; no EMA or periodic validation); one process trains unsharded
    fsdp: bool = False
    # experiment trackers besides RUN/log.jsonl (always written): tensorboard, wandb, mlflow
    # (the last two: pip install 'mmtl[wandb]' / 'mmtl[mlflow]'); see mmtl/training/trackers.py
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])


@dataclass
class BalancerConfig:
    """How per-task losses are combined into one update.

    ``name`` picks the registered balancer; its own settings sit beside these keys (``balancer.c=0.5``
    for CAGrad, ``balancer.weights`` for ``fixed``), checked against the dataclass it owns
    (``Balancer.Settings``). Configs written before they sat flat nest them under ``options``
    (``balancer.options.c``), which is still read.
    """

    slot: ClassVar[Slot] = Slot("balancer", earlier_nest="options")
    name: str = "equal"
    # gradient balancers: per-task gradients on all shared parameters, or on the shared
    # representation (one backward through the trunk); recomputed every ``update_every`` steps
    on: str = choice("params", "params", "representation")
    update_every: int = setting(1, range=AT_LEAST_ONE)
    # compute the T per-task gradients with one vmapped backward (torch.autograd.grad(is_grads_batched=True))
    # instead of T backwards: same numbers; on 2 CPU cores it was slower (docs/benchmarks.md), so off by default
    batched_backward: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskSettingsConfig:
    """One task's settings (``task_settings.<task>``, under the task's registry key): its keys are the
    fields of the task's own ``Settings`` dataclass (``task_settings.summarization.mode``)."""

    slot: ClassVar[Slot] = Slot("task", selector="", shared_keys=False)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationConfig:
    """Decoding options for captioning and summarization (greedy when num_beams=1 and do_sample=false)."""

    # a bigger beam or a smaller temperature than these ranges allow costs unbounded memory, or
    # overflows the logits into NaN
    max_length: int = setting(40, range=between(1, 100_000), help="most tokens to generate")
    num_beams: int = setting(1, range=between(1, 64), help="beam size (1 = greedy)")
    length_penalty: float = setting(1.0, range=between(-100.0, 100.0), help="beam score length exponent")
    do_sample: bool = setting(False, help="sample instead of searching")
    temperature: float = setting(1.0, range=between(1e-4, 1e4), help="sampling temperature")
    top_k: int = setting(0, range=between(0, 1_000_000), help="sample from the k most likely tokens (0 = all)")
    top_p: float = setting(1.0, range=between(0.0, 1.0, low_open=True), help="nucleus sampling mass")
    # 4 (issue #28, docs/benchmarks.md): a loop of up to 3 tokens stops after one repeat; shapes-world captioning
    # gained 1.3 BLEU-4 and summarization kept its ROUGE-L; 3 would forbid 17% of shapes-world captions
    # ("a small red square below a small red circle")
    no_repeat_ngram_size: int = setting(4, range=between(0, 1_000), help="forbid repeating n-grams of this size")
    # a run of up to this many words written twice in a row is forbidden (0: off): the loops n-gram blocking
    # lets through once ("graph neural graph neural"). 4 (issue #28, docs/benchmarks.md): SciTLDR outputs with
    # such a loop 249 -> 1 of 618 and ROUGE-L up on 3 of 3 seeds, DialogSum up on 2 of 2, quickstart unchanged
    no_immediate_repeat_size: int = setting(4, range=between(0, 1_000),
                                            help="forbid writing a run of up to this many words twice in a row")
    # unset (None): each task's own, ``task_settings.<task>.repetition_penalty`` (summarization 1.8, captioning
    # 1.0: issue #28, docs/benchmarks.md); a value set here applies to every task
    repetition_penalty: float | None = setting(None, range=between(0.0, 100.0, low_open=True),
                                               help="penalty on tokens already generated (unset: each task's own)")
    seed: int = setting(0, range=between(0, 2**63 - 1), help="sampling seed")
    # no EOS before this many tokens (benchmarks use it to force a fixed length)
    min_length: int = setting(0, range=between(0, 100_000))
    # whole words only: no piece of a document word pasted, no word left unfinished (mmtl.models.words)
    whole_words: bool = setting(True, help="write whole words only (complete a begun document word)")
    # with no_repeat_ngram_size: an n-gram may still repeat as often as the document repeats it (a dialogue's
    # "#Person1#" is four tokens, and its summary names the speaker more than once); with
    # no_immediate_repeat_size, a run the document writes twice in a row may be written twice too
    repeat_document_ngrams: bool = setting(True, help="n-grams may repeat as often as in the document")


# name -> (lowest, highest or None, lowest excluded) of each bounded decoding option (the server's schema reads it)
GENERATION_BOUNDS: dict[str, tuple[Number, Number | None, bool]] = {
    f.name: (f.metadata["range"].low, f.metadata["range"].high, f.metadata["range"].low_open)
    for f in dataclasses.fields(GenerationConfig) if "range" in f.metadata
}


def validate_generation(gen: GenerationConfig, prefix: str = "generation") -> None:
    """Range checks of decoding options (types are checked when the dataclass is built)."""
    check_ranges(gen, prefix)


@dataclass
class EvalConfig:
    """Held-out evaluation after training."""

    split: str = setting("test", help="held-out split of each source")
    max_samples: int = setting(0, range=NON_NEGATIVE)
    batch_size: int = setting(64, range=between(1, 1_000_000))
    threshold: float = setting(0.5, range=Range(0, 1), help="minimum tag score")
    num_examples: int = setting(3, range=between(0, 10_000))
    generation: GenerationConfig = field(default_factory=GenerationConfig)


@dataclass
class ValidationConfig:
    """Periodic validation during training (``train.eval_every``): drift alarm, best checkpoint, early stop.

    Scores compare each validation's metrics with a reference: the single-task ``baselines`` file
    when given (Δm), else the run's first validation (mean relative improvement over it).
    """

    # samples of data.val_split per validation (0: the whole split)
    max_samples: int = setting(0, range=NON_NEGATIVE)
    # baselines.json from `mmtl baselines` (evaluated on the same split as data.val_split)
    baselines: str | None = setting(None, local=True)
    # a task regresses when its primary metric is more than this fraction below the reference
    tolerance: float = setting(0.02, range=NON_NEGATIVE,
                               help="relative drop of a task's primary metric still counted as no regression")
    # which validation's weights go to checkpoints/best: highest Δm, lowest summed validation loss,
    # or the latest; with delta_m/loss a validation where a task regressed is best only if all did
    select: str = choice("delta_m", "delta_m", "loss", "last")
    # stop when the selection score (Δm for select=last) has not improved for this many validations (0: never)
    early_stop_patience: int = setting(0, range=NON_NEGATIVE)
    # smallest score gain that counts as an improvement for early stopping and best selection
    min_improvement: float = setting(0.0, range=NON_NEGATIVE)
    # warn when a task's primary metric worsened for this many consecutive validations while the
    # mean of the other tasks' primary metrics improved (0: no drift alarm)
    drift_patience: int = setting(3, range=NON_NEGATIVE)
    # "no task left behind" (mmtl/training/protection.py): a task behind its reference (the baselines, else
    # its own best validation) has its loss factor multiplied by protect_boost at each validation (at most
    # protect_max), and divided by it again once it is not behind (factors kept relative: the smallest is 1);
    # with train.eval_every=0 it validates every train.steps // 8 steps
    protect: bool = setting(False, help="raise the loss weight of a task that falls behind its reference")
    protect_boost: float = setting(2.0, range=Range(1, 100), help="factor applied per validation to a lagging task")
    protect_max: float = setting(8.0, range=Range(1, 1000), help="largest loss factor of a protected task")


@dataclass
class FinetuneConfig:
    """``mmtl finetune``: what is added to a trained model and how it is trained (mmtl.finetuning)."""

    # frozen: only new parts train; lora: new parts + low-rank adapters on fusion and decoders, used
    # only for inputs of the new modalities and for new tasks; full: everything, old parts at a lower LR
    strategy: str = setting("frozen", choices=("frozen", "lora", "full"),
                            help="frozen: train only new parts; lora: plus adapters on fusion and heads; full: "
                                 "everything, old parts at finetune.old_lr_scale x the learning rate")
    add_modalities: list[str] = field(default_factory=list)
    add_tasks: list[str] = field(default_factory=list)
    # weight of the loss pulling a new modality's pooled representation toward its paired one's (0: off)
    align_weight: float = setting(0.0, range=NON_NEGATIVE,
                                  help="weight of the loss pulling the new modality toward its paired one")
    old_lr_scale: float = setting(0.1, range=Range(0, low_open=True))  # full: learning-rate factor of the trained parts
    lora_rank: int = setting(8, range=between(0, 65_536, low_open=True))
    # non-regression check: the old tasks on the base model's data (regression_data: a shard directory of
    # your choosing, as a checkpoint's recorded data is never read; empty: no check), this split, at most
    # this many samples
    regression_data: str = setting("", local=True, help="the base model's data set, for the non-regression check")
    regression_split: str = "val"
    regression_samples: int = setting(200, range=NON_NEGATIVE)


@dataclass
class ExperimentConfig:
    """Everything a run needs. The defaults are the quickstart experiment."""

    name: str = "quickstart"
    output_dir: str = setting("runs/quickstart", local=True)
    seed: int = 0
    tasks: list[str] = field(default_factory=lambda: ["recognition", "captioning", "summarization"])
    data: DataConfig = setting(factory=DataConfig, local=True)  # a checkpoint's data settings are never used
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    balancer: BalancerConfig = field(default_factory=BalancerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    # per-task settings by task registry key, e.g. {summarization: {mode: extractive}}; each task's
    # entry is checked against the settings dataclass the task class owns (Task.Settings)
    task_settings: dict[str, TaskSettingsConfig] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML-serialisable); the component settings of flat sections sit beside their keys."""
        return as_tree(self)
