from pathlib import Path

import pytest
import torch

from data_pipelines.loader import Collator, Example
from mmtl.builder import build_components
from mmtl.config import resolve_config
from mmtl.models.layers import EncoderBlock
from mmtl.text import Vocabulary

CLASSES = ["red circle", "blue square", "green triangle"]
VOCAB = Vocabulary.from_texts(["a red circle left of a blue square", "anna drew 2 objects : a b c"])
ANNOTATION = {
    "labels": ["red circle", "blue square"],
    "captions": ["a red circle left of a blue square"],
    "document": "anna drew a red circle . a blue square is left .",
    "summaries": ["anna drew 2 objects : a red circle and a blue square"],
}


def _model(*overrides: str):
    config = resolve_config({}, ["model.preset=micro", *overrides])
    return config, build_components(config, CLASSES, VOCAB)


def _batch(parts, image: bool = True, text: bool = True, tasks=None):
    torch.manual_seed(0)
    import random

    rng = random.Random(0)
    examples = []
    for i in range(4):
        targets = {t.name: t.target(ANNOTATION, rng) for t in parts.tasks if tasks is None or t.name in tasks}
        ids = VOCAB.encode(ANNOTATION["document"], 64) if text else []
        pixels = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8) if image else None
        examples.append(Example(str(i), pixels, ids, targets, ANNOTATION))
    return Collator(parts.tasks, 32)(examples)


@pytest.mark.parametrize("task", ["recognition", "captioning", "summarization"])
def test_one_training_step_per_task_has_finite_gradients_and_lowers_loss(task: str) -> None:
    config, parts = _model(f"tasks=[{task}]")
    model = parts.model
    batch = _batch(parts)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        loss = model(batch)[task]
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    # the task's own head received gradient
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.heads[task].parameters())


def test_tasks_share_one_image_encoding_per_batch() -> None:
    config, parts = _model()
    calls = []
    parts.model.encoders["image"].register_forward_hook(lambda *a: calls.append(1))
    parts.model(_batch(parts))
    assert len(calls) == 1


def test_captioning_does_not_see_the_document() -> None:
    """Captions must come from vision: changing the text must not change captioning's loss."""
    config, parts = _model()
    parts.model.eval()
    batch = _batch(parts)
    with torch.no_grad():
        before = parts.model(batch)
        batch.text = torch.flip(batch.text, dims=[1])
        after = parts.model(batch)
    assert torch.allclose(before["captioning"], after["captioning"])
    assert not torch.allclose(before["summarization"], after["summarization"])


@pytest.mark.parametrize("fusion", ["single_stream", "late"])
@pytest.mark.parametrize("image, text", [(True, False), (False, True), (True, True)])
def test_any_fusion_handles_missing_modalities(fusion: str, image: bool, text: bool) -> None:
    config, parts = _model(f"model.fusion.name={fusion}")
    batch = _batch(parts, image=image, text=text)
    out = parts.model.predict(batch, ["recognition", "captioning", "summarization"])
    assert all(len(v) == 4 for v in out.values())
    fused = parts.model.fuse(batch, ("image", "text"), {})
    assert torch.isfinite(fused.tokens).all() and torch.isfinite(fused.pooled).all()


@pytest.mark.parametrize("fusion", ["single_stream", "cross_attention", "late"])
def test_a_modality_no_row_carries_is_not_encoded(fusion: str) -> None:
    """Text-only rows for a task that reads image and text: the image encoder does not run on blank
    images (time, and BatchNorm statistics of blank images), and the loss is what encoding them gives."""
    config, parts = _model(f"model.fusion.name={fusion}", "tasks=[summarization]")
    model = parts.model
    batch = _batch(parts, image=False).to("cpu")  # as the trainer moves it
    calls = []
    model.encoders["image"].register_forward_hook(lambda *a: calls.append(1))
    statistics = {k: v.clone() for k, v in model.encoders["image"].state_dict().items()}
    model.train()
    model(batch)["summarization"].backward()
    assert calls == []
    assert all(torch.equal(v, model.encoders["image"].state_dict()[k]) for k, v in statistics.items())
    model.eval()
    with torch.no_grad():
        skipped = model(batch)["summarization"]
        model.skip_absent_modalities = False
        encoded = model(batch)["summarization"]
    assert calls == [1]
    torch.testing.assert_close(skipped, encoded)


@pytest.mark.parametrize("keep", [True, False])
def test_heads_read_the_fusion_inputs_beside_its_outputs_unless_told_not_to(keep: bool) -> None:
    config, parts = _model(f"model.fusion.keep_inputs={str(keep).lower()}")
    model = parts.model.eval()
    batch = _batch(parts)
    cache: dict = {}
    with torch.no_grad():
        fused = model.fuse(batch, ("image", "text"), cache)
    image, text = cache["image"], cache["text"]
    inputs = image.tokens.shape[1] + text.tokens.shape[1]
    assert fused.tokens.shape[1] == 1 + inputs * (2 if keep else 1)  # the global token, outputs, inputs
    assert fused.ids.shape == fused.valid.shape == fused.tokens.shape[:2]
    if keep:  # the appended document tokens carry their vocabulary ids (what a copying decoder copies)
        assert torch.equal(fused.ids[:, -text.tokens.shape[1]:], batch.text[:, :text.tokens.shape[1]])
        assert torch.equal(fused.valid[:, -inputs:], torch.cat([image.valid, text.valid], 1))
        expected = torch.nn.functional.layer_norm(image.tokens, image.tokens.shape[-1:], model.input_norm.weight,
                                                  model.input_norm.bias)
        torch.testing.assert_close(fused.tokens[:, 1 + inputs:1 + inputs + image.tokens.shape[1]], expected)


def test_late_fusion_does_not_repeat_the_inputs_its_tokens_already_hold() -> None:
    config, parts = _model("model.fusion.name=late")
    cache: dict = {}
    fused = parts.model.fuse(_batch(parts), ("image",), cache)
    assert fused.tokens.shape[1] == 1 + cache["image"].tokens.shape[1]


def test_a_checkpoint_saved_before_a_model_setting_existed_loads_as_the_model_it_was(tmp_path: Path) -> None:
    """Settings added later (the fusion's input tokens, untied decoder embeddings) take, for a config.yaml
    written without them, the value that rebuilds the saved model, not today's default."""
    import yaml

    from mmtl.checkpoint import CONFIG_FILE, load_checkpoint, save_pretrained

    config, parts = _model("model.fusion.keep_inputs=false", "model.decoder.tie_embeddings=true")
    saved = save_pretrained(parts, tmp_path / "old")
    tree = yaml.safe_load((saved / CONFIG_FILE).read_text())
    del tree["model"]["fusion"]["keep_inputs"], tree["model"]["decoder"]["tie_embeddings"]
    (saved / CONFIG_FILE).write_text(yaml.safe_dump(tree))
    components, loaded, _, _ = load_checkpoint(saved)
    assert loaded.model.fusion.keep_inputs is False and loaded.model.decoder.tie_embeddings is True
    batch = _batch(parts)
    names = ["recognition", "captioning", "summarization"]
    assert components.model.eval().predict(batch, names) == parts.model.eval().predict(batch, names)
    # a config file a user writes still gets today's defaults
    assert resolve_config({}).model.fusion.keep_inputs is True


def test_rows_without_a_task_are_not_in_its_loss() -> None:
    config, parts = _model("tasks=[recognition]")
    batch = _batch(parts)
    batch.targets["recognition"]["index"] = torch.tensor([0, 2])
    batch.targets["recognition"]["labels"] = batch.targets["recognition"]["labels"][:2]
    assert torch.isfinite(parts.model(batch)["recognition"])


def test_parameter_report_splits_shared_and_task_specific() -> None:
    config, parts = _model()
    report = parts.model.parameter_report()
    assert report["total"] == report["shared"] + sum(v for k, v in report.items() if k.startswith("task:"))


def test_cached_and_uncached_greedy_decoding_are_identical() -> None:
    config, parts = _model()
    model = parts.model.eval()
    # random weights give varied, long outputs; make EOS unlikely so sequences run to the limit
    batch = _batch(parts)
    fused = model.fuse(batch, ("image", "text"), {})
    decoder = model.heads["summarization"]
    cached = decoder.generate(fused.tokens, fused.valid, 20, use_cache=True)
    plain = decoder.generate(fused.tokens, fused.valid, 20, use_cache=False)
    assert cached.shape[1] > 1
    assert torch.equal(cached, plain)


def test_an_untrained_encoder_block_passes_its_input_through_and_still_learns() -> None:
    torch.manual_seed(0)
    block = EncoderBlock(width=16, num_heads=2)
    x = torch.randn(3, 5, 16, requires_grad=True)
    y = block(x)
    assert torch.equal(y, x)
    (y * torch.randn_like(y)).sum().backward()
    assert block.attn.out.weight.grad.abs().sum() > 0 and block.mlp[2].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("tie", [False, True])
def test_decoder_output_layer_is_separate_unless_tied(tie: bool, tmp_path: Path) -> None:
    """Untied (the default): an output layer of its own and unit-scale token embeddings, which made
    captioning learn reliably across seeds. Tied: the embedding is the output layer, started small."""
    from mmtl.checkpoint import load_pretrained, save_pretrained

    torch.manual_seed(0)
    config, parts = _model(f"model.decoder.tie_embeddings={str(tie).lower()}")
    decoder = parts.model.heads["captioning"]
    embed_std = decoder.embed.weight[1:].std().item()
    if tie:
        assert decoder.out is None and embed_std < 0.05
    else:
        assert decoder.out.weight.shape == decoder.embed.weight.shape and 0.9 < embed_std < 1.1
    batch = _batch(parts)
    model = parts.model.eval()
    with torch.no_grad():
        before = model(batch)["captioning"]
    loaded = load_pretrained(save_pretrained(parts, tmp_path / "m"))
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(batch)["captioning"], before)


def _seeded_model(seed: int, *overrides: str):
    torch.manual_seed(seed)
    return _model(*overrides)[1].model


@pytest.mark.parametrize("decoder", ["model.decoder.shared=false", "model.decoder.shared=true"])
def test_a_part_starts_from_the_same_weights_whatever_other_tasks_the_model_has(decoder: str) -> None:
    # a multi-task model and its single-task models "with the same seed" must start their shared parts and
    # a task's own head from the same weights, or a per-seed comparison compares two initialisations
    # (issue #24: seed 2's multi-task and single-task captioning decoders started apart)
    alone = dict(_seeded_model(2, "tasks=[captioning]", decoder).named_parameters())
    together = dict(_seeded_model(2, "tasks=[recognition,captioning,summarization]", decoder).named_parameters())
    parts = ("encoders.", "fusion.", "heads.captioning.", "shared_heads.")
    names = [n for n in alone if n.startswith(parts)]
    assert any(n.startswith("heads.captioning.") or n.startswith("shared_heads.") for n in names)
    assert [n for n in names if n not in together] == []
    differing = [n for n in names if not torch.equal(alone[n], together[n])]
    assert differing == []
    # the seed still matters, and parts do not share one stream
    other = dict(_seeded_model(3, "tasks=[captioning]", decoder).named_parameters())
    assert not all(torch.equal(alone[n], other[n]) for n in names)


def test_seeding_a_part_leaves_the_global_generator_where_it_was() -> None:
    from mmtl.models.seeding import part_seed, seeded_part

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with seeded_part(5, "head/captioning"):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected)
    assert not torch.equal(inside, expected)
    assert part_seed(5, "head/captioning") == part_seed(5, "head/captioning") != part_seed(5, "head/recognition")
