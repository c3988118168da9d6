"""Fine-tuning for new modalities and tasks: strategies, delta save/load, non-regression, CLI."""
from __future__ import annotations

import base64
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from data_pipelines.loader import LoaderSettings, make_loader
from data_pipelines.shapes_world import write_shards
from mmtl.checkpoint import DELTA_FILE, META_FILE, build_on_base, load_base, load_delta, write_delta
from mmtl.cli import main
from mmtl.config import load_config
from mmtl.errors import MMTLError
from mmtl.finetuning import REGRESSION_FILE, finetune_config, run_finetune
from mmtl.inference import Predictor
from mmtl.training.run import train
from mmtl.serve import ServerLimits, make_server
from tests.conftest import micro_overrides, multipart, post_json, request, serving, sigterm_after_step

FT_EXTRA = ["finetune.regression_samples=8", "eval.max_samples=8", "train.checkpoint_every=0"]


@pytest.fixture(scope="module")
def base_run(micro_data: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """A micro model trained for two steps on the micro shapes data (image + text)."""
    out = tmp_path_factory.mktemp("base") / "run"
    train(load_config(None, micro_overrides(micro_data, out, steps=2)))
    return out


@pytest.fixture(scope="module")
def depth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """New scenes with image, depth map, sound and object count (same classes as micro_data)."""
    path = tmp_path_factory.mktemp("depth_data")
    write_shards(path, {"train": 32, "val": 8, "test": 8}, seed=5, difficulty="easy", image_size=32, shard_size=40,
                 modalities=("image", "depth", "audio"), count=True)
    return path


def _config(data: Path, out: Path, *extra: str, steps: int = 2):
    return load_config(None, micro_overrides(data, out, steps=steps) + FT_EXTRA + list(extra))


def _batch(data: Path, components, split: str = "val"):
    loader = make_loader(str(data), split, components.tasks, components.vocab,
                         LoaderSettings(image_size=32, context_length=64, batch_size=8, train=False))
    return next(iter(loader))


def _tuned_key(key: str, tuned: dict) -> str:
    """The name of base tensor ``key`` in the fine-tuned model (a layer wrapped by an adapter moves to ``.base``)."""
    if key in tuned:
        return key
    owner, leaf = key.rsplit(".", 1)
    assert f"{owner}.base.{leaf}" in tuned, key
    return f"{owner}.base.{leaf}"


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "checkpoints" / (path / "checkpoints" / "LATEST").read_text().strip() / "model.safetensors"))


@pytest.mark.parametrize("strategy", ["frozen", "lora", "full"])
def test_strategy_trains_the_intended_parameters(strategy: str, base_run: Path, depth_data: Path, tmp_path: Path,
                                                 micro_data: Path, one_thread: None) -> None:
    # the base model's data for the non-regression check is the user's setting (never the checkpoint's)
    check = "finetune.regression_samples=0" if strategy == "full" else f"finetune.regression_data={micro_data}"
    # frozen adds only a task head (nothing shared trains); lora and full add depth and the head
    modalities = "[]" if strategy == "frozen" else "[depth]"
    config = _config(depth_data, tmp_path / "ft", f"finetune.strategy={strategy}", f"finetune.add_modalities={modalities}",
                     "finetune.add_tasks=[counting]", "finetune.align_weight=1.0", check)
    result = run_finetune(base_run, config)
    components, _, meta = load_delta(result.directory)
    base = _state(base_run)
    tuned = components.model.state_dict()
    changed = {k for k, v in base.items() if not torch.equal(v, tuned[_tuned_key(k, tuned)])}
    delta = load_file(str(result.directory / DELTA_FILE))
    assert meta["finetune"]["strategy"] == strategy
    assert any(k.startswith("encoders.depth.") for k in delta) == (strategy != "frozen")
    assert any(k.startswith("heads.counting.") for k in delta)
    if strategy == "full":
        assert changed and set(base) <= set(delta)  # old parts trained too (at a lower learning rate)
        assert result.regression == []  # regression_samples=0 turns the check off
    else:
        assert not changed, sorted(changed)[:5]  # old parameters and buffers bitwise unchanged
        assert not set(delta) & set(base)  # only new tensors were saved
        adapters = [k for k in delta if ".adapter." in k]
        assert bool(adapters) == (strategy == "lora")
        # the non-regression report: the old tasks' metrics are exactly unchanged
        report = json.loads((result.directory / REGRESSION_FILE).read_text())
        assert report["rows"] and all(row["change"] == 0.0 for row in report["rows"])
        assert {r.task for r in result.regression} == {"recognition", "captioning", "summarization"}


def test_full_strategy_uses_a_lower_learning_rate_on_old_parts(base_run: Path, depth_data: Path, tmp_path: Path) -> None:
    from mmtl.training.optim import build_optimizer

    config = _config(depth_data, tmp_path / "ft", "finetune.strategy=full", "finetune.add_modalities=[depth]",
                     "finetune.old_lr_scale=0.25")
    components, _ = build_on_base(load_base(base_run), finetune_config(load_base(base_run), config))
    optimizer = build_optimizer([components.model], config.train, torch.device("cpu"))
    depth_param = components.model.encoders["depth"].proj.weight
    fusion_param = next(components.model.fusion.parameters())
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lr_of[id(depth_param)] == pytest.approx(config.train.lr)
    assert lr_of[id(fusion_param)] == pytest.approx(0.25 * config.train.lr)


def test_new_encoder_can_start_from_the_trained_one(base_run: Path, depth_data: Path, tmp_path: Path) -> None:
    config = _config(depth_data, tmp_path / "ft", "finetune.add_modalities=[depth]",
                     "model.modalities={depth: {init_from: image}}")
    components, _ = build_on_base(load_base(base_run), finetune_config(load_base(base_run), config))
    image, depth = components.model.encoders["image"], components.model.encoders["depth"]
    assert torch.equal(image.backbone.layer1[0].conv1.weight, depth.backbone.layer1[0].conv1.weight)
    assert torch.allclose(image.backbone.conv1.weight.sum(1, keepdim=True), depth.backbone.conv1.weight)
    assert torch.equal(image.proj.weight, depth.proj.weight)
    # position and type embeddings start as the image's too: depth enters the fusion where images did
    assert torch.equal(image.position, depth.position) and torch.equal(image.type_embedding, depth.type_embedding)
    assert image.type_embedding is not depth.type_embedding  # copies, not shared tensors


def test_frozen_model_gives_bitwise_identical_outputs_on_old_inputs(base_run: Path, micro_data: Path, depth_data: Path,
                                                                    tmp_path: Path, one_thread: None) -> None:
    for strategy in ("frozen", "lora"):
        config = _config(depth_data, tmp_path / strategy, f"finetune.strategy={strategy}",
                         "finetune.add_modalities=[depth]", "finetune.add_tasks=[counting]")
        base = load_base(base_run)
        components, delta = build_on_base(base, finetune_config(base, config))
        with torch.no_grad():  # pretend training moved every new tensor (adapters included)
            for name, tensor in components.model.state_dict(keep_vars=True).items():
                if name in delta and tensor.is_floating_point():
                    tensor.add_(torch.randn_like(tensor) * 0.1)
        reference = Predictor.from_pretrained(base_run).model.eval()
        model = components.model.eval()
        batch = _batch(micro_data, components)
        old = {k: v for k, v in batch.targets.items() if k != "counting"}
        torch.manual_seed(0)
        expected = reference(type(batch)(**{**batch.__dict__, "targets": old}))
        got = model(type(batch)(**{**batch.__dict__, "targets": old}))
        assert all(torch.equal(expected[k], got[k]) for k in expected), strategy
        # on depth inputs the new parts (and adapters) are used: recognition's loss differs from the image route
        depth_batch = _batch(depth_data, components)
        assert model.task_inputs(components.tasks[0], depth_batch) == ("depth",)


def test_delta_round_trip_and_bad_base(base_run: Path, depth_data: Path, tmp_path: Path, one_thread: None) -> None:
    base_copy = tmp_path / "base"
    shutil.copytree(base_run, base_copy)
    config = _config(depth_data, tmp_path / "ft", "finetune.strategy=lora", "finetune.add_modalities=[depth]",
                     "finetune.add_tasks=[counting]")
    base = load_base(base_copy)
    tuned = finetune_config(base, config)
    components, delta = build_on_base(base, tuned)
    with torch.no_grad():
        for name, tensor in components.model.state_dict(keep_vars=True).items():
            if name in delta and tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.1)
    out = write_delta(tmp_path / "ft", components, tuned, base, delta, step=2)
    batch = _batch(depth_data, components, "test")
    names = ["recognition", "captioning", "counting"]
    expected = components.model.eval().predict(batch, names, tuned.eval)
    loaded = Predictor.from_pretrained(out)
    assert loaded.model.predict(batch, names, tuned.eval) == expected
    assert sum(t.numel() for t in load_file(str(out / DELTA_FILE)).values()) < 0.5 * sum(
        p.numel() for p in components.model.parameters())
    # exported, the fine-tuned model is one standalone folder (merged weights) that predicts the same
    assert main(["export", "--checkpoint", str(out), "--out", str(tmp_path / "exported")]) == 0
    exported = tmp_path / "exported"
    assert not (exported / DELTA_FILE).exists() and (exported / "model.safetensors").is_file()
    assert str(base_copy) not in (exported / META_FILE).read_text()  # no local path of the base travels with it
    # a changed base checkpoint is refused, by its hash
    checkpoint = base.path / "model.safetensors"
    state = load_file(str(checkpoint))
    first = sorted(state)[0]
    state[first] = state[first] + 1
    save_file(state, str(checkpoint))
    with pytest.raises(MMTLError, match="changed since"):
        Predictor.from_pretrained(out)
    shutil.rmtree(base_copy)  # the export needs no base
    assert Predictor.from_pretrained(exported).model.predict(batch, names, tuned.eval) == expected
    with pytest.raises(MMTLError, match="fine-tuned"):
        load_base(exported)  # fine-tune the base checkpoint, not a merged export


def _lora_depth_delta(base_run: Path, depth_data: Path, tmp_path: Path) -> tuple:
    """A LoRA fine-tuning of ``base_run`` that adds depth, built but not trained: (base, config, components, delta)."""
    config = _config(depth_data, tmp_path / "ft", "finetune.strategy=lora", "finetune.add_modalities=[depth]")
    base = load_base(base_run)
    tuned = finetune_config(base, config)
    components, delta = build_on_base(base, tuned)
    return base, tuned, components, delta


def test_a_saved_delta_reaches_the_disk_before_its_meta_names_it(base_run: Path, depth_data: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    """Each file is fsynced before the rename that publishes it, and meta.json (what loading reads first)
    is published last: a crash part-way never pairs a new meta with an old or empty delta."""
    base, tuned, components, delta = _lora_depth_delta(base_run, depth_data, tmp_path)
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("sync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                  real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda src, dst: (events.append(("replace", str(src))), real_replace(src, dst))[1])
    out = write_delta(tmp_path / "ft", components, tuned, base, delta, step=1)
    published = [Path(path).name[1:].rsplit(".", 2)[0] for kind, path in events if kind == "replace"]  # .NAME.xxx.tmp
    assert published[-1] == META_FILE and DELTA_FILE in published
    for index, (kind, path) in enumerate(events):
        if kind == "replace":
            assert ("sync", path) in events[:index], f"{path} renamed before it was synced"
    assert events[-1] == ("sync", str(out))


def test_a_delta_with_non_finite_weights_is_refused_and_nothing_is_written(base_run: Path, depth_data: Path,
                                                                            tmp_path: Path, one_thread: None) -> None:
    base, tuned, components, delta = _lora_depth_delta(base_run, depth_data, tmp_path)
    with torch.no_grad():
        components.model.encoders["depth"].proj.weight[0, 0] = float("nan")
    with pytest.raises(MMTLError, match="NaN or infinite"):
        write_delta(tmp_path / "ft", components, tuned, base, delta, step=1)
    assert not (tmp_path / "ft" / DELTA_FILE).exists() and not (tmp_path / "ft" / META_FILE).exists()


def test_a_delta_never_writes_through_a_link_left_at_its_temp_name(base_run: Path, depth_data: Path,
                                                                   tmp_path: Path, one_thread: None) -> None:
    base, tuned, components, delta = _lora_depth_delta(base_run, depth_data, tmp_path)
    outside = tmp_path / "someone-elses-file"
    outside.write_text("keep me")
    (tmp_path / "ft").mkdir()
    for name in (DELTA_FILE, META_FILE):
        (tmp_path / "ft" / f".{name}.tmp").symlink_to(outside)
    out = write_delta(tmp_path / "ft", components, tuned, base, delta, step=1)
    assert outside.read_text() == "keep me"
    assert not (out / DELTA_FILE).is_symlink() and not (out / META_FILE).is_symlink() and load_delta(out)


def test_finetune_cli_happy_path_predict_and_bad_inputs(base_run: Path, depth_data: Path, micro_data: Path,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        one_thread: None) -> None:
    out = tmp_path / "ft"
    code = main(["finetune", "--checkpoint", str(base_run), "--add-modality", "audio", "--strategy", "frozen",
                 *micro_overrides(depth_data, out, steps=2), *FT_EXTRA, "model.modalities={audio: {seconds: 0.5}}",
                 f"finetune.regression_data={micro_data}"])
    printed = capsys.readouterr().out
    assert code == 0 and "recognition" in printed and "+0.0000" in printed and (out / DELTA_FILE).is_file()
    with tarfile.open(sorted(depth_data.glob("test-*.tar"))[0]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".wav"))
        (tmp_path / "scene.wav").write_bytes(tar.extractfile(member).read())
    assert main(["predict", "--checkpoint", str(out), "--modality", f"audio={tmp_path / 'scene.wav'}", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"recognition", "captioning"}  # summarization needs text
    # many pairs: a JSONL field per further modality, a path relative to the file
    (tmp_path / "pairs.jsonl").write_text(
        '{"id": "a", "audio": "scene.wav"}\n{"id": "b", "audio": "missing.wav"}\n{"id": "c", "audio": 3}\n')
    assert main(["predict", "--checkpoint", str(out), "--input", str(tmp_path / "pairs.jsonl"),
                 "--output", str(tmp_path / "pred.jsonl"), "--no-progress"]) == 0
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "pred.jsonl").read_text().splitlines())}
    assert rows["a"]["recognition"] == result["recognition"] and "error" not in rows["a"]
    assert "audio file not found" in rows["b"]["error"] and "'audio' must be a path" in rows["c"]["error"]
    assert main(["eval", "--checkpoint", str(out), "--data", str(depth_data), "--max-samples", "8"]) == 0
    assert "recognition" in capsys.readouterr().out
    # the HTTP server takes the further modality as a file field, multipart or base64 JSON
    wav = (tmp_path / "scene.wav").read_bytes()
    with serving(make_server(Predictor.from_pretrained(out), "127.0.0.1", 0, ServerLimits())) as server:
        status, answer = request(server, "/v1/predict", *multipart({}, files={"audio": wav}))
        assert status == 200 and answer["predictions"] == result, answer
        status, answer = post_json(server, {"audio": base64.b64encode(wav).decode(), "tasks": ["recognition"]})
        assert status == 200 and answer["predictions"] == {"recognition": result["recognition"]}
        status, answer = post_json(server, {"audio": base64.b64encode(b"not a sound").decode()})
        assert status == 400 and "audio" in answer["error"]
        status, answer = post_json(server, {"depth": ""})
        assert status == 422 and "unknown field(s) depth" in answer["error"] and "audio" in answer["error"]
    bad = [
        ["finetune", "--checkpoint", str(tmp_path / "missing"), "--add-modality", "depth"],
        ["finetune", "--checkpoint", str(base_run), "--add-modality", "smell"],
        ["finetune", "--checkpoint", str(base_run), "--add-task", "juggling"],
        ["finetune", "--checkpoint", str(base_run)],
        ["predict", "--checkpoint", str(out), "--modality", f"depth={tmp_path / 'scene.wav'}"],
        ["data", "synth", "--out", str(tmp_path / "synth"), "--num", "2", "--modalities", "image,smell"],
    ]
    for argv in bad:
        capsys.readouterr()
        assert main(argv + ([f"output_dir={tmp_path / 'x'}"] if argv[0] == "finetune" else [])) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("mmtl: error:") and "\n" not in err, err


def test_an_interrupted_finetune_resumes_through_the_cli_to_the_same_delta(
        base_run: Path, depth_data: Path, tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    extra = ["finetune.strategy=lora", "finetune.add_modalities=[depth]", "finetune.add_tasks=[counting]",
             "finetune.regression_samples=0", "train.checkpoint_every=2"]
    whole = run_finetune(base_run, _config(depth_data, tmp_path / "whole", *extra, steps=4))
    sigterm_after_step(monkeypatch, 2)
    out = tmp_path / "stopped"
    code = main(["finetune", "--checkpoint", str(base_run), *micro_overrides(depth_data, out, steps=4),
                 *FT_EXTRA, *extra])
    message = capsys.readouterr().err
    assert code == 143 and "--resume latest" in message and "mmtl finetune" in message
    assert not (out / DELTA_FILE).exists()
    monkeypatch.undo()
    command = message.split("`")[1].split()  # the command the user is told to run
    assert command[:2] == ["mmtl", "finetune"]
    assert main(command[1:]) == 0
    resumed, finished = load_file(str(out / DELTA_FILE)), load_file(str(whole.directory / DELTA_FILE))
    assert resumed.keys() == finished.keys()
    assert all(torch.equal(resumed[k], finished[k]) for k in finished)
    steps = [json.loads(line)["step"] for line in (out / "train" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # continued after step 2, not started over
    capsys.readouterr()
    assert main(command[1:]) == 2  # finished: its step checkpoints are gone, nothing to resume
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmtl: error:") and "no checkpoint" in err and "\n" not in err, err
