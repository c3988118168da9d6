"""Model assembly: every fusion under every sharing mode, heads, save/load, `mmtl model info`."""
from __future__ import annotations

import random

import pytest
import torch

from data_pipelines.loader import Collator, Example
from mmtl.builder import build_components
from mmtl.checkpoint import checkpoint_meta, load_pretrained, save_pretrained
from mmtl.config import resolve_config
from mmtl.errors import ConfigError
from mmtl.models.sharing import LoRALinear, TaskGatedMoE
from mmtl.registry import FUSIONS
from mmtl.text import Vocabulary

import mmtl.components  # noqa: F401


pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["red circle", "blue square", "green triangle"]
VOCAB = Vocabulary.from_texts(["a red circle left of a blue square", "anna drew 2 objects : a b c"])
ANNOTATION = {
    "labels": ["red circle"], "captions": ["a red circle left of a blue square"],
    "document": "anna drew a red circle .", "summaries": ["anna drew 2 objects : a red circle"],
}
SHARING = [("hard", []), ("soft", []), ("hybrid", []), ("hybrid", ["model.moe_experts=2"])]


def _parts(*overrides: str):
    config = resolve_config({}, ["model.preset=micro", *overrides])
    return build_components(config, CLASSES, VOCAB)


def _batch(parts, image: bool = True, text: bool = True):
    torch.manual_seed(0)
    rng = random.Random(0)
    examples = []
    for i in range(3):
        targets = {t.name: t.target(ANNOTATION, rng) for t in parts.tasks}
        pixels = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8) if image else None
        ids = VOCAB.encode(ANNOTATION["document"], 64) if text else []
        examples.append(Example(str(i), pixels, ids, targets, ANNOTATION))
    return Collator(parts.tasks, 32)(examples)


@pytest.mark.parametrize("fusion", FUSIONS.keys())
@pytest.mark.parametrize("sharing, extra", SHARING)
def test_every_fusion_and_sharing_trains_with_finite_gradients(fusion: str, sharing: str, extra: list[str]) -> None:
    parts = _parts(f"model.fusion.name={fusion}", f"model.sharing={sharing}", *extra)
    model = parts.model
    losses = model(_batch(parts))
    assert set(losses) == {"recognition", "captioning", "summarization"}
    sum(losses.values()).backward()
    grads = [p.grad for p in model.fusion.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if sharing != "hard":  # every task's own fusion parameters are trained by that task
        report = {name: p for name, p in model.named_parameters() if ".per_task." in f".{name}"}
        assert report and all(p.grad is not None for p in report.values())
    model.eval()
    for image, text in [(True, False), (False, True)]:
        batch = _batch(parts, image=image, text=text)
        out = model.predict(batch, ["recognition", "captioning", "summarization"])
        assert all(len(v) == 3 for v in out.values())
        for task in model.tasks.values():
            fused = model.fuse(batch, task.inputs, {}, task.name)
            assert torch.isfinite(fused.tokens).all() and torch.isfinite(fused.pooled).all()


@pytest.mark.parametrize("sharing, extra", SHARING)
def test_parameter_report_splits_shared_and_task_specific(sharing: str, extra: list[str]) -> None:
    model = _parts(f"model.sharing={sharing}", "model.fusion.name=cross_attention", *extra).model
    report = model.parameter_report()
    tasks = [k for k in report if k.startswith("task:")]
    assert report["total"] == report["shared"] + sum(report[k] for k in tasks)
    fusion_total = sum(p.numel() for p in model.fusion.parameters())
    heads = {name: sum(p.numel() for p in head.parameters()) for name, head in model.heads.items()}
    if sharing == "hard":
        assert all(report[f"task:{n}"] == heads[n] for n in heads)
    elif sharing == "soft":
        # each task owns a whole trunk; only the cross-stitch units are shared in the fusion
        per_trunk = sum(p.numel() for p in model.fusion.per_task["captioning"].parameters())
        assert all(report[f"task:{n}"] == heads[n] + per_trunk for n in heads)
        assert fusion_total == 3 * per_trunk + model.fusion.stitch.numel()
    else:
        adapters = [m for m in model.fusion.modules() if isinstance(m, (LoRALinear, TaskGatedMoE))]
        own = sum(p.numel() for m in adapters for p in m.per_task["captioning"].parameters())
        assert own > 0 and report["task:captioning"] == heads["captioning"] + own
        assert any(isinstance(m, TaskGatedMoE) for m in adapters) == bool(extra)


def test_hybrid_tasks_get_different_representations_and_soft_trunks_are_mixed() -> None:
    parts = _parts("model.sharing=hybrid")
    for module in parts.model.fusion.modules():  # non-zero adapters: tasks must now differ
        if isinstance(module, LoRALinear):
            for adapter in module.per_task.values():
                torch.nn.init.normal_(adapter.up, std=0.5)
    batch = _batch(parts)
    cache: dict = {}
    a = parts.model.fuse(batch, ("image",), cache, "recognition")
    b = parts.model.fuse(batch, ("image",), cache, "captioning")
    assert not torch.allclose(a.tokens, b.tokens)
    soft = _parts("model.sharing=soft").model
    with torch.no_grad():
        soft.fusion.stitch.copy_(torch.eye(3).repeat(soft.fusion.stitch.shape[0], 1, 1))
        independent = soft.fuse(batch, ("image",), {}, "captioning").tokens
        soft.fusion.stitch[:, 1, 0] = 1.0  # captioning's trunk now reads recognition's too
        mixed = soft.fuse(batch, ("image",), {}, "captioning").tokens
    assert not torch.allclose(independent, mixed)


def test_shared_decoder_is_one_module_with_a_prompt_per_task() -> None:
    separate = _parts().model
    shared = _parts("model.decoder.shared=true").model
    assert list(shared.shared_heads) == ["text_decoder"]
    decoder_size = sum(p.numel() for p in shared.shared_heads["text_decoder"].parameters())
    report_shared, report_separate = shared.parameter_report(), separate.parameter_report()
    assert report_shared["task:captioning"] == 32  # the task prompt (width)
    # separate decoders: captioning's has no copy module (its input holds no text), summarization's has one
    copy_size = sum(p.numel() for p in shared.shared_heads["text_decoder"].copy.parameters())
    assert report_separate["total"] - report_shared["total"] == decoder_size - copy_size - 2 * 32
    batch = _batch(_parts("model.decoder.shared=true"))
    losses = shared(batch)
    sum(losses.values()).backward()
    assert shared.heads["captioning"].prompt.grad is not None
    # the task prompt changes what the shared decoder predicts
    shared.eval()
    fused = shared.fuse(batch, ("image",), {})
    ids = torch.tensor([[1, 5, 6]])
    a = shared.heads["captioning"](ids, fused.tokens[:1], fused.valid[:1])
    b = shared.heads["summarization"](ids, fused.tokens[:1], fused.valid[:1])
    assert not torch.allclose(a, b)


def test_bad_sharing_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model.sharing must be one of hard, soft, hybrid"):
        resolve_config({}, ["model.sharing=wide"])
    with pytest.raises(ConfigError, match="model.lora_rank"):
        resolve_config({}, ["model.lora_rank=0"])


def test_single_label_recognition_uses_softmax_and_ranks_top_classes(tmp_path) -> None:
    import json

    from mmtl.builder import components_from_data

    (tmp_path / "dataset.json").write_text(json.dumps({"classes": CLASSES, "label_mode": "single"}))
    config = resolve_config({}, ["model.preset=micro", "tasks=[recognition]", f"data.path={tmp_path}",
                                 "model.text.vocab=full"])
    parts = components_from_data(config)
    task = parts.tasks[0]
    assert checkpoint_meta(parts, 0)["label_mode"] == "single" and task.single
    assert task.target({"labels": ["blue square", "red circle"]}, random.Random(0)).item() == 1
    batch = _batch(parts)
    optimizer = torch.optim.AdamW(parts.model.parameters(), lr=1e-2)
    losses = []
    for _ in range(4):
        loss = parts.model(batch)["recognition"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert abs(losses[0] - torch.log(torch.tensor(3.0)).item()) < 0.5 and losses[-1] < losses[0]  # CE over 3 classes
    ranked = parts.model.eval().predict(batch, ["recognition"])["recognition"]
    assert all(len(r) == 3 and abs(sum(p for _, p in r) - 1) < 1e-3 for r in ranked)
    assert all(r[0][1] >= r[1][1] >= r[2][1] for r in ranked)
    assert task.score([["red circle", "blue square"], ["blue square", "red circle"]], [["red circle"], ["red circle"]]) \
        == {"top1": 0.5, "top5": 1.0}
    assert task.primary_metric == "top1"  # shown as top-1 in the eval table, not as f1_micro


def test_multi_label_stays_the_default() -> None:
    parts = _parts("tasks=[recognition]")
    target = parts.tasks[0].target({"labels": ["blue square", "red circle"]}, random.Random(0))
    assert parts.label_mode == "multi" and target.tolist() == [1.0, 1.0, 0.0]


def test_save_pretrained_round_trip_gives_identical_outputs(tmp_path) -> None:
    parts = _parts("model.sharing=hybrid", "model.moe_experts=2", "model.decoder.shared=true",
                   "model.fusion.name=cross_attention")
    model = parts.model.eval()
    batch = _batch(parts)
    with torch.no_grad():
        torch.nn.init.normal_(next(iter(m for m in model.modules() if isinstance(m, LoRALinear))).per_task["captioning"].up)
        before = model(batch)
    save_pretrained(parts, tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["config.yaml", "meta.json", "model.safetensors"]
    loaded = load_pretrained(tmp_path / "saved").model
    with torch.no_grad():
        after = loaded(batch)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert loaded.predict(batch, ["captioning", "recognition"]) == model.predict(batch, ["captioning", "recognition"])
    assert loaded.config == model.config and loaded.vocab.to_dict() == VOCAB.to_dict()


def test_from_pretrained_names_mismatched_tensors(tmp_path) -> None:
    import yaml

    from mmtl.errors import MMTLError

    save_pretrained(_parts(), tmp_path)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    config["model"]["fusion"]["depth"] = 2
    config["model"]["decoder"]["max_length"] = 50
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(MMTLError, match=r"missing fusion\.blocks\.1\.attn.*shape heads\.captioning\.position \(40, 32\) vs \(50, 32\)"):
        load_pretrained(tmp_path)
    with pytest.raises(MMTLError, match="holds no model.safetensors"):
        load_pretrained(tmp_path / "nothing")


def test_model_info_cli_prints_parameters_per_part_and_flops(micro_data, capsys) -> None:
    from mmtl.cli import main

    assert main(["model", "info", f"data.path={micro_data}", "model.preset=micro", "model.sharing=hybrid"]) == 0
    out = capsys.readouterr().out
    assert f"classes (multi-label) from {micro_data}; vocabulary from {micro_data}" in out
    fusion_row = next(line for line in out.splitlines() if line.startswith("fusion"))
    assert all(int(v.replace(",", "")) > 0 for v in fusion_row.split()[1:])  # shared trunk + adapters per task
    flops = {line.split()[0]: float(line.split()[1]) for line in out.split("forward FLOPs")[1].splitlines()[1:]}
    assert set(flops) == {"recognition", "captioning", "summarization"} and all(v > 0 for v in flops.values())
    assert flops["summarization"] > flops["recognition"]  # reads the document and decodes
    assert main(["model", "info", "model.sharing=wide"]) == 2
    assert "model.sharing must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["model", "info", "--help"])
    assert exit_info.value.code == 0 and "FLOPs per task" in capsys.readouterr().out


def test_base_preset_resolves_to_a_vit_b16_class_model() -> None:
    from mmtl.config import MODEL_PRESETS, selected

    config = resolve_config({}, ["model.preset=base"]).model
    assert (config.width, config.num_heads, selected(config.text, "model.text")[1].depth) == (768, 12, 12)
    assert selected(config.image, "model.image")[1].timm_model == "vit_base_patch16_224" and config.image.image_size == 224
    assert {"micro", "tiny", "small", "base"} <= set(MODEL_PRESETS)


@pytest.mark.parametrize("fusion", FUSIONS.keys())
def test_bf16_autocast_output_is_close_to_fp32(fusion: str) -> None:
    parts = _parts(f"model.fusion.name={fusion}")
    model, batch = parts.model.eval(), _batch(parts)
    with torch.no_grad():
        full = model.fuse(batch, ("image", "text"), {})
        losses = model(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model.fuse(batch, ("image", "text"), {})
            half_losses = model(batch)
    assert not torch.equal(full.tokens, half.tokens.float())  # bf16 did run (layer norms return fp32)
    similarity = torch.nn.functional.cosine_similarity(full.tokens.flatten(1), half.tokens.float().flatten(1))
    assert (similarity > 0.99).all()
    assert all(abs(float(half_losses[k]) - float(losses[k])) < 0.05 * float(losses[k]) for k in losses)
