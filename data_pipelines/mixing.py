"""Multi-task mixing across data sources: how much of each step's batch each source supplies.

Every step gets one multi-task :class:`~data_pipelines.loader.Batch`: its rows come from the
sources, and ``targets[task]`` is that step's batch of each task (the rows that carry the task).
A sample annotated for several tasks feeds all of them from one row, so its image is decoded and
encoded once. A strategy sets the *task shares* (the fraction of all task rows that belong to each
task) and the sources are drawn, sample by sample, with the probabilities that realise them:

* ``natural``: sources in proportion to their sample counts (as if concatenated and shuffled);
* ``proportional``: task shares p_t ∝ n_t (task counts from each source's ``dataset.json``);
* ``temperature``: p_t ∝ n_t^(1/T) (T = ``data.mixing_temperature``; T > 1 lifts small tasks);
* ``fixed``: sources in proportion to their ``weight``;
* ``round_robin``: each batch comes from one source, the sources taking turns batch by batch.

Where one source feeds several tasks the task shares cannot be set independently; the source
probabilities are then the closest (least squares) to the target shares, and
:attr:`MixPlan.task_shares` says what the mixture really gives.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from data_pipelines.shards import read_dataset_info, split_entry
from mmtl.errors import ConfigError, MMTLError

STRATEGIES = ("natural", "proportional", "temperature", "fixed", "round_robin")
T = TypeVar("T")


@dataclass(frozen=True)
class Source:
    """One shard directory and split, the tasks it feeds, and its weight (for ``fixed`` mixing)."""

    path: str
    split: str
    tasks: tuple[str, ...] | None = None  # None: every task it has annotations for
    weight: float = 1.0
    mapping: tuple[str, ...] = ()  # FIELD=PATH items for shards without dataset.json (data_pipelines.shardsets)


@dataclass
class SourceCounts:
    """A source's sample count and per-task counts (from its ``dataset.json``), limited to its tasks."""

    samples: int
    tasks: dict[str, int]


@dataclass
class MixPlan:
    """The resolved mixture: sources, their draw probabilities, target and resulting task shares."""

    strategy: str
    sources: list[Source]
    counts: list[SourceCounts]
    probabilities: list[float]
    target_task_shares: dict[str, float] = field(default_factory=dict)
    task_shares: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """One line per source and the task shares, for logs."""
        lines = [f"mixing={self.strategy}"]
        for source, p in zip(self.sources, self.probabilities):
            lines.append(f"  {source.path}:{source.split} p={p:.3f}")
        lines.append("  task shares: " + ", ".join(f"{t}={s:.3f}" for t, s in self.task_shares.items()))
        return "\n".join(lines)


def source_counts(source: Source, tasks: Sequence[str]) -> SourceCounts:
    """Counts of ``source`` from its ``dataset.json``, limited to ``tasks`` and the source's own task list."""
    split = split_entry(read_dataset_info(source.path, source.mapping), source.split, source.path)
    wanted = [t for t in tasks if source.tasks is None or t in source.tasks]
    counts = {t: int(split.get("tasks", {}).get(t, 0)) for t in wanted}
    return SourceCounts(int(split.get("samples", 0)), {t: n for t, n in counts.items() if n > 0})


def target_task_shares(strategy: str, counts: Sequence[SourceCounts], temperature: float = 1.0) -> dict[str, float]:
    """p_t ∝ n_t^(1/T) over the tasks' total counts (``proportional``: T = 1)."""
    power = 1.0 if strategy == "proportional" else 1.0 / temperature
    totals: dict[str, int] = {}
    for c in counts:
        for task, n in c.tasks.items():
            totals[task] = totals.get(task, 0) + n
    scaled = {t: float(n) ** power for t, n in totals.items() if n > 0}
    norm = sum(scaled.values())
    return {t: v / norm for t, v in scaled.items()} if norm else {}


def resulting_task_shares(probabilities: Sequence[float], counts: Sequence[SourceCounts]) -> dict[str, float]:
    """Task shares when sources are drawn with ``probabilities``: each draw brings the source's per-sample task rates."""
    rows: dict[str, float] = {}
    for p, c in zip(probabilities, counts):
        for task, n in c.tasks.items():
            rows[task] = rows.get(task, 0.0) + p * n / max(c.samples, 1)
    norm = sum(rows.values())
    return {t: v / norm for t, v in rows.items()} if norm else {}


def probabilities_for_shares(shares: dict[str, float], counts: Sequence[SourceCounts],
                             natural: Sequence[float]) -> list[float]:
    """Source probabilities whose task shares are closest to ``shares`` (least squares on the simplex).

    Task t's share is r_t(q) / sum(r) with r_t = sum_s q_s f_st (f_st: rate of t in source s), so
    share = target is the linear condition A q = 0 with A_ts = f_st - p_t F_s. A small pull towards
    the natural mixture picks among equally good solutions (e.g. two sources of the same task keep
    their size ratio). Solved by projected gradient descent; the problem has one variable per source.
    """
    tasks = list(shares)
    rates = np.array([[c.tasks.get(t, 0) / max(c.samples, 1) for t in tasks] for c in counts])  # (S, T)
    target = np.array([shares[t] for t in tasks])
    a = rates.T - np.outer(target, rates.sum(1))  # (T, S)
    q0 = np.asarray(natural, dtype=float)
    reg = 1e-6
    hessian = a.T @ a + reg * np.eye(len(counts))
    step = 1.0 / (np.linalg.eigvalsh(hessian).max() + 1e-12)
    q = q0.copy()
    for _ in range(20_000):
        grad = hessian @ q - reg * q0
        q_new = _project_to_simplex(q - step * grad)
        if np.abs(q_new - q).max() < 1e-12:
            break
        q = q_new
    return [float(v) for v in q]


def _project_to_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {q >= 0, sum q = 1}."""
    u = np.sort(v)[::-1]
    cumulative = np.cumsum(u) - 1.0
    rho = np.nonzero(u - cumulative / np.arange(1, len(v) + 1) > 0)[0][-1]
    return np.maximum(v - cumulative[rho] / (rho + 1), 0.0)


def plan_mixing(sources: Sequence[Source], tasks: Sequence[str], strategy: str = "natural",
                temperature: float = 2.0) -> MixPlan:
    """Resolve the draw probability of each source for ``strategy`` (see the module docstring)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"data.mixing must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if strategy == "temperature" and temperature <= 0:
        raise ConfigError(f"data.mixing_temperature must be positive, got {temperature}")
    if any(s.weight < 0 for s in sources) or not any(s.weight > 0 for s in sources):
        raise ConfigError("data.sources weights must be >= 0 with at least one positive")
    counts = [source_counts(s, tasks) for s in sources]
    total = sum(c.samples for c in counts)
    natural = [c.samples / total if total else 1.0 / len(sources) for c in counts]
    target: dict[str, float] = {}
    if len(sources) == 1:
        probabilities = [1.0]
    elif strategy == "natural":
        probabilities = natural
    elif strategy == "fixed":
        weight = sum(s.weight for s in sources)
        probabilities = [s.weight / weight for s in sources]
    elif strategy == "round_robin":
        probabilities = [1.0 / len(sources)] * len(sources)
    else:
        target = target_task_shares(strategy, counts, temperature)
        probabilities = probabilities_for_shares(target, counts, natural) if target else natural
    return MixPlan(strategy, list(sources), counts, probabilities, target, resulting_task_shares(probabilities, counts))


def interleave(streams: Sequence[Iterable[T]], probabilities: Sequence[float], rng: random.Random) -> Iterator[tuple[int, T]]:
    """Draw (source index, item) pairs: each draw picks a source with ``probabilities``.

    A finite stream that ends drops out and the others are renormalised; ends when all have ended.
    """
    iterators = [iter(s) for s in streams]
    live = [i for i, p in enumerate(probabilities) if p > 0]
    while live:
        (index,) = rng.choices(live, weights=[probabilities[i] for i in live])
        try:
            yield index, next(iterators[index])
        except StopIteration:
            live.remove(index)


def training_sources(data: Any) -> list[Source]:
    """The training sources of a ``DataConfig``: ``data.sources``, or ``data.path`` alone when it lists none."""
    if not data.sources:
        return [Source(data.path, data.train_split, mapping=tuple(data.map))]
    return [Source(s.path, s.split or data.train_split, None if s.tasks is None else tuple(s.tasks), s.weight,
                   tuple(data.map if s.map is None else s.map)) for s in data.sources]
