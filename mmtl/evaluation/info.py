"""``mmtl model info``: parameters per part (shared vs per task) and forward FLOPs per task of a config's model."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import torch

from data_pipelines.loader import Batch, Collator, Example
from data_pipelines.mixing import training_sources
from data_pipelines.sample import TEXT_INPUT_FIELD, task_fields
from data_pipelines.shards import DATASET_FILE
from mmtl.builder import Components, build_components, components_from_data
from mmtl.config import ExperimentConfig
from mmtl.text import Vocabulary

STAND_IN_CLASSES = 80  # class count assumed when the config's data set is absent (COCO's)


def build_for_info(config: ExperimentConfig) -> tuple[Components, str]:
    """Components from the config's data set when it exists, else from a stand-in (80 classes, full
    vocabulary). Returns (components, note): ``note`` says which."""
    paths = list(dict.fromkeys(s.path for s in training_sources(config.data)))
    if all((Path(path) / DATASET_FILE).is_file() for path in paths):
        components = components_from_data(config)
        return components, (f"{len(components.classes)} classes ({components.label_mode}-label) from "
                            f"{', '.join(components.class_sources)}; vocabulary from {', '.join(paths)}")
    classes = [f"class{i}" for i in range(STAND_IN_CLASSES)]
    absent = ", ".join(p for p in paths if not (Path(p) / DATASET_FILE).is_file())
    note = (f"no data set at {absent}: assuming {STAND_IN_CLASSES} classes and the full "
            "49,412-row vocabulary (a data set's compact vocabulary makes embeddings much smaller)")
    return build_components(config, classes, Vocabulary(None)), note


def example_batch(components: Components, config: ExperimentConfig, tasks: Sequence[str] | None = None) -> Batch:
    """One sample that supervises every task (or ``tasks``), with inputs at their longest (text fills the context)."""
    words = " ".join(["word"] * (config.model.text.context_length + config.model.decoder.max_length))
    annotation = {field: [words] for fields in task_fields().values() for field in fields}
    annotation[TEXT_INPUT_FIELD] = words
    annotation["labels"] = components.classes[:1]
    rng = random.Random(0)
    targets = {t.name: t.target(annotation, rng) for t in components.tasks if tasks is None or t.name in tasks}
    size = config.model.image.image_size
    ids = components.vocab.encode(words, config.model.text.context_length)
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
    example = Example("info", image, ids, {k: v for k, v in targets.items() if v is not None}, annotation)
    return Collator(components.tasks, size)([example])


def model_info(config: ExperimentConfig) -> str:
    """A table of parameters per part and task, then forward FLOPs per task (one sample)."""
    components, note = build_for_info(config)
    model = components.model.eval()
    tasks = list(model.tasks)
    rows: dict[str, dict[str | None, int]] = {}
    for part, task, count in model.parameter_parts():
        rows.setdefault(part, {})[task] = rows.get(part, {}).get(task, 0) + count
    header = f"{'part':<28}{'shared':>14}" + "".join(f"{t:>16}" for t in tasks)
    lines = [f"model: preset={config.model.preset} fusion={config.model.fusion.name} sharing={config.model.sharing} "
             f"decoder.shared={config.model.decoder.shared}", f"note: {note}", "", "parameters", header]
    for part, counts in rows.items():
        lines.append(f"{part:<28}{counts.get(None, 0):>14,}" + "".join(f"{counts.get(t, 0):>16,}" for t in tasks))
    report = model.parameter_report()
    lines.append(f"{'total':<28}{report['shared']:>14,}" + "".join(f"{report[f'task:{t}']:>16,}" for t in tasks))
    lines.append(f"all parameters: {report['total']:,}")
    flops = model.forward_flops(example_batch(components, config))
    lines += ["", "forward FLOPs per task (one sample; inputs at full length)"]
    lines += [f"{t:<28}{flops.get(t, 0) / 1e9:>14.3f} GFLOP" for t in tasks]
    return "\n".join(lines)
