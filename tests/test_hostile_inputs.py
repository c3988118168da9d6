"""Fault injection (issue #25): checkpoints and shard folders someone else wrote stay data.

Every hostile checkpoint folder (a pipe: data source, an include, local paths, huge sizes, a huge
class count) and shard folder (a linked, forged or stale scan cache) is opened as a user would; the
checks: no command runs (no marker file appears), nothing is written outside the output folder,
and bad input is one line with exit code 2, never an internal error.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from data_pipelines.pipes import allow_pipes
from data_pipelines.shards import read_dataset_info
from mmtl.checkpoint import CONFIG_FILE, load_checkpoint, resolve_checkpoint
from mmtl.cli import main
from mmtl.inference import Predictor
from tests.conftest import micro_overrides


@pytest.fixture(scope="module")
def checkpoint(micro_data: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """A micro model's checkpoint directory (one training step)."""
    run = tmp_path_factory.mktemp("hostile") / "run"
    assert main(["train", *micro_overrides(micro_data, run, steps=1), "train.checkpoint_every=0"]) == 0
    return resolve_checkpoint(run)


def hostile(checkpoint: Path, where: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of ``checkpoint`` in ``where/ckpt`` whose config.yaml ``edit`` changed."""
    copy = where / "ckpt"
    shutil.copytree(checkpoint, copy)
    tree = yaml.safe_load((copy / CONFIG_FILE).read_text())
    edit(tree)
    (copy / CONFIG_FILE).write_text(yaml.safe_dump(tree))
    return copy


def one_line_error(capsys: pytest.CaptureFixture, *needles: str) -> str:
    """The one error line the last command printed (no traceback, not an internal error)."""
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("mmtl: error: "), err
    assert "internal error" not in err and "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_a_checkpoints_pipe_source_never_runs(checkpoint: Path, micro_data: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "marker"
    tar = sorted(micro_data.glob("test-*.tar"))[0]
    command = f"pipe:touch {marker}; cat {tar}"

    def edit(tree: dict) -> None:
        tree["data"] = {"path": command, "allow_pipe": True, "sources": [{"path": command}]}
        tree["output_dir"] = str(tmp_path / "elsewhere")

    ckpt = hostile(checkpoint, tmp_path, edit)
    before = files_under(tmp_path)
    # eval takes its data from the command line or the user's own config, never the checkpoint's
    assert main(["eval", "--checkpoint", str(ckpt)]) == 2
    one_line_error(capsys, "--data", "--config")
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(micro_data), "--max-samples", "8"]) == 0
    assert main(["predict", "--checkpoint", str(ckpt), "--text", "anna drew a red circle ."]) == 0
    predictor = Predictor.from_pretrained(ckpt)
    assert not predictor.config.data.allow_pipe and predictor.config.data.path != command
    assert predictor.config.output_dir != str(tmp_path / "elsewhere")
    assert not marker.exists()
    assert files_under(tmp_path) == before  # nothing written beside or outside the checkpoint


def test_a_pipe_source_needs_the_users_opt_in_and_is_logged(checkpoint: Path, micro_data: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    marker = tmp_path / "marker"
    tar = sorted(micro_data.glob("test-*.tar"))[0]
    command = f"pipe:touch {marker}; cat {tar}"
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", command, "--max-samples", "4"]) == 2
    one_line_error(capsys, "data.allow_pipe=true", "touch")
    assert not marker.exists()
    assert main(["train", *micro_overrides(micro_data, tmp_path / "run", steps=1), f"data.path={command}"]) == 2
    one_line_error(capsys, "data.allow_pipe=true")
    assert not marker.exists()
    with caplog.at_level(logging.WARNING, logger="data_pipelines.pipes"):
        assert main(["eval", "--checkpoint", str(checkpoint), "--data", command, "--max-samples", "4",
                     "data.allow_pipe=true"]) == 0
    assert marker.exists()  # the user asked for it
    assert any("running pipe: command" in r.getMessage() and f"touch {marker}" in r.getMessage()
               for r in caplog.records)


def test_a_checkpoints_include_and_local_paths_are_not_followed(checkpoint: Path, micro_data: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "secret.yaml"
    secret.write_text("this: [is not, a config")  # reading it would fail loudly

    def edit(tree: dict) -> None:
        tree["include"] = [str(secret), "/etc/passwd"]
        tree["model"]["image"]["pretrained_path"] = str(tmp_path / "nowhere.safetensors")
        tree["validation"]["baselines"] = str(tmp_path / "nowhere.json")

    ckpt = hostile(checkpoint, tmp_path, edit)
    with caplog.at_level(logging.WARNING):
        components, config, _, _ = load_checkpoint(ckpt)
    assert config.model.image.pretrained_path is None and config.validation.baselines is None
    assert sum("ignoring include" in r.getMessage() for r in caplog.records) == 1
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(micro_data), "--max-samples", "4"]) == 0


# ---------------------------------------------------------------------------------------------
# the scan cache beside shards without dataset.json


@pytest.fixture()
def plain_shards(micro_data: Path, tmp_path: Path) -> Path:
    """Shards without a dataset.json (they are scanned, and the scan cached beside them)."""
    folder = tmp_path / "shared" / "shards"
    folder.mkdir(parents=True)
    for tar in sorted(micro_data.glob("train-*.tar")):
        shutil.copy(tar, folder / tar.name.replace("train-", "part-"))
    return folder


def cache_file(folder: Path) -> Path:
    (found,) = folder.glob(".mmtl-scan-*.json")
    return found


def test_a_linked_scan_cache_is_replaced_not_written_through(plain_shards: Path, tmp_path: Path) -> None:
    info = read_dataset_info(plain_shards)
    cache = cache_file(plain_shards)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    cache.unlink()
    cache.symlink_to(victim)
    assert read_dataset_info(plain_shards) == info
    assert victim.read_text() == "precious"
    assert not cache.is_symlink() and cache.is_file()  # the link itself was replaced
    assert not list(plain_shards.glob(".mmtl-scan-*.tmp"))  # no temp file left behind


@pytest.mark.parametrize("forged", ['{"splits": 5}', '{"key": "KEY", "info": {"splits": 5}}', "[1, 2]", "not json",
                                    '{"key": "KEY", "info": {"name": "x", "splits": {"all": {"samples": "9", '
                                    '"shards": [], "tasks": {}, "corrupt": 0}}, "classes": [], "label_mode": "multi", '
                                    '"written_by": {}, "any_split": true}}'])
def test_a_forged_scan_cache_is_ignored_with_one_warning(forged: str, plain_shards: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    info = read_dataset_info(plain_shards)
    cache = cache_file(plain_shards)
    import json

    key = json.loads(cache.read_text())["key"]
    cache.write_text(forged.replace("KEY", key))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert read_dataset_info(plain_shards) == info
    warnings = [r for r in caplog.records if "scan cache" in r.getMessage()]
    assert len(warnings) == 1 and str(cache) in warnings[0].getMessage()
    assert json.loads(cache.read_text())["info"] == info  # rebuilt


def test_a_replaced_shard_of_the_same_size_and_time_is_scanned_again(plain_shards: Path) -> None:
    before = read_dataset_info(plain_shards)
    shard = sorted(plain_shards.glob("*.tar"))[0]
    data = shard.read_bytes()
    changed = data.replace(b'"captions"', b'"captionz"')  # same size; fewer captioning samples
    assert changed != data and len(changed) == len(data)
    stat = shard.stat()
    fresh = shard.with_suffix(".new")
    fresh.write_bytes(changed)  # a new file (a new inode) while the old one still exists
    os.utime(fresh, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(fresh, shard)
    assert shard.stat().st_size == stat.st_size and shard.stat().st_mtime_ns == stat.st_mtime_ns
    after = read_dataset_info(plain_shards)
    assert after["splits"]["all"]["tasks"]["captioning"] < before["splits"]["all"]["tasks"]["captioning"]


def test_pipes_are_refused_in_the_library_unless_allowed(micro_data: Path, tmp_path: Path) -> None:
    from data_pipelines.shards import iter_annotations
    from mmtl.errors import MMTLError

    marker = tmp_path / "marker"
    command = f"pipe:touch {marker}; cat {sorted(micro_data.glob('test-*.tar'))[0]}"
    with pytest.raises(MMTLError, match="data.allow_pipe"):
        list(iter_annotations(command, "test"))
    assert not marker.exists()
    allow_pipes(True)
    assert list(iter_annotations(command, "test")) and marker.exists()


# ---------------------------------------------------------------------------------------------
# sizes refused before allocation


@pytest.mark.parametrize("edit, field", [
    ({"model": {"width": 200_000}}, "model.width"),
    ({"model": {"fusion": {"depth": 100_000}}}, "model.fusion.depth"),
    ({"model": {"text": {"context_length": 10**9}}}, "model.text.context_length"),
    ({"model": {"decoder": {"max_length": 10**9}}}, "model.decoder.max_length"),
    ({"model": {"image": {"image_size": 10**6}}}, "model.image.image_size"),
    ({"model": {"width": 16_384}}, "model.width=16384"),  # in range, over the budget
    ({"model": {"text": {"context_length": 100_000}}}, "model.text.context_length=100000"),
    ({"model": {"decoder": {"max_length": 500_000}}}, "model.decoder.max_length=500000"),
    ({"model": {"image": {"image_size": 8_192}}}, "model.image.image_size=8192"),
    ({"model": {"memory_budget_gb": 10**6, "width": 16_384}}, "model.width=16384"),  # a checkpoint cannot raise it
])
def test_a_checkpoints_huge_sizes_are_refused_before_building(edit: dict, field: str, checkpoint: Path,
                                                              tmp_path: Path, capsys: pytest.CaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from mmtl.config import deep_merge

    monkeypatch.setenv("MMTL_MEMORY_BUDGET_GB", "2")
    ckpt = hostile(checkpoint, tmp_path, lambda tree: tree.update(deep_merge(tree, edit)))
    assert main(["predict", "--checkpoint", str(ckpt), "--text", "anna drew a red circle ."]) == 2
    one_line_error(capsys, field)


def test_a_huge_class_list_is_refused_before_the_head_is_built(checkpoint: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    import json

    ckpt = hostile(checkpoint, tmp_path, lambda tree: None)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["classes"] = [f"c{i}" for i in range(3_000_000)]
    (ckpt / "meta.json").write_text(json.dumps(meta))
    assert main(["predict", "--checkpoint", str(ckpt), "--text", "anna drew a red circle ."]) == 2
    one_line_error(capsys, "3,000,000 classes")


def test_a_training_config_over_the_budget_names_the_field(micro_data: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["train", *micro_overrides(micro_data, out, steps=1), "model.memory_budget_gb=0.001"]) == 2
    one_line_error(capsys, "the model would need about", "model.memory_budget_gb")
    assert not (out / "checkpoints").exists()


def test_a_refused_model_peaks_under_500_mb(checkpoint: Path, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    ckpt = hostile(checkpoint, tmp_path, lambda tree: tree["model"].update(width=16_384))
    meta = json.loads((ckpt / "meta.json").read_text())
    wide = tmp_path / "classes"
    shutil.copytree(checkpoint, wide)
    meta["classes"] = [f"c{i}" for i in range(3_000_000)]
    (wide / "meta.json").write_text(json.dumps(meta))
    # VmHWM: this process's peak resident set (ru_maxrss would carry over the forking test process's)
    probe = ("import re, sys; from mmtl.cli import main; code = main(sys.argv[1:]); "
             "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); sys.exit(code)")
    for folder in (ckpt, wide):
        done = subprocess.run([sys.executable, "-c", probe, "predict", "--checkpoint", str(folder), "--text", "a b"],
                              capture_output=True, text=True, env={**os.environ, "MMTL_MEMORY_BUDGET_GB": "2"},
                              timeout=600)
        assert done.returncode == 2, done.stderr
        peak_mb = int(done.stdout.split()[-1]) / 1024
        assert peak_mb < 500, (folder.name, peak_mb)


PEAK_PROBE = ("import re, sys; from mmtl.cli import main; code = main(sys.argv[1:]); "
              "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); sys.exit(code)")


@pytest.mark.parametrize("command, override, field", [
    ("train", "model.width=200000", "model.width"),
    ("train", "model.fusion.depth=100000", "model.fusion.depth"),
    ("train", "model.width=16384", "model.width=16384"),  # in range, over the budget
    ("baselines", "model.width=16384", "model.width=16384"),
    ("train", "data.decoded_cache_mb=100000", "data.decoded_cache_mb=100000"),
    ("train", "data.shard_cache_mb=100000", "data.shard_cache_mb=100000"),
])
def test_an_oversized_own_config_is_refused_before_torch_under_500_mb(command: str, override: str, field: str,
                                                                      tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", PEAK_PROBE, command, f"output_dir={out}", override],
                          capture_output=True, text=True, env={**os.environ, "MMTL_MEMORY_BUDGET_GB": "2"}, timeout=600)
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("mmtl: error: ") and field in err, err
    peak_mb = int(done.stdout.split()[-1]) / 1024
    assert peak_mb < 500, (override, peak_mb)
    assert not out.exists()


def test_the_decoded_image_cache_counts_in_the_budget_and_the_quickstart_fits_24_gb() -> None:
    from mmtl.config import check_budget, load_config
    from mmtl.config.budget import costs

    config = load_config(None, ["model.preset=tiny"])
    cache = next(item for item in costs(config, 10, 49408, 32, training=True) if item.field.startswith("data.decoded"))
    assert cache.bytes == config.data.decoded_cache_mb * 2**20
    assert not any(item.field.startswith("data.decoded") and item.bytes
                   for item in costs(config, 10, 49408, 32, training=False))
    for preset in ("micro", "tiny"):
        quick = load_config(Path(__file__).parents[1] / "configs/experiment/quickstart.yaml", [f"model.preset={preset}", "model.memory_budget_gb=24"])
        assert check_budget(quick, 20, 49408, training=True) < 24 * 2**30


# ---------------------------------------------------------------------------------------------
# weights files named in the user's config


def test_a_pretrained_path_that_is_not_weights_is_one_line(micro_data: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    overrides = micro_overrides(micro_data, tmp_path / "run", steps=1)
    for path in (text, "/etc/passwd"):
        assert main(["train", *overrides, f"model.image.pretrained_path={path}"]) == 2
        one_line_error(capsys, "model.image.pretrained_path", "cannot load weights from")
    assert main(["train", *overrides, f"model.image.pretrained_path={tmp_path}"]) == 2
    one_line_error(capsys, "is a directory")


def test_an_unreadable_weights_file_says_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mmtl.models.encoders as encoders
    from mmtl.errors import ConfigError

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    weights.chmod(0)

    def refuse(path: Any, *args: Any, **kwargs: Any) -> Any:  # as for a user without root's override
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(encoders, "open", refuse, raising=False)
    for load in (lambda: encoders.load_state_file(weights, "model.text.pretrained_path"),
                 lambda: encoders.TimmImageEncoder("resnet18", {}, 8, 32, str(weights))):
        with pytest.raises(ConfigError, match="permission denied") as caught:
            load()
        assert "No such file" not in str(caught.value)


@pytest.mark.parametrize("forge, field", [
    (lambda meta: meta["vocab"].update(joined_words=[1, 2]), "vocab.joined_words"),
    (lambda meta: meta["vocab"].update(bpe_ids="abc"), "vocab.bpe_ids"),
    (lambda meta: meta["vocab"].update(word_initial=[None]), "vocab.word_initial"),
    (lambda meta: meta["vocab"].update(kind=3), "vocab.kind"),
    (lambda meta: meta.update(classes={"a": 1}), "classes"),
    (lambda meta: meta.update(label_mode=[]), "label_mode"),
    (lambda meta: meta.pop("vocab"), "vocab"),
])
def test_forged_metadata_gets_one_line_naming_the_field(checkpoint: Path, tmp_path: Path, capsys, forge,
                                                        field: str) -> None:
    import json

    ckpt = hostile(checkpoint, tmp_path, lambda tree: None)
    meta = json.loads((ckpt / "meta.json").read_text())
    forge(meta)
    (ckpt / "meta.json").write_text(json.dumps(meta))
    assert main(["predict", "--checkpoint", str(ckpt), "--text", "anna drew a red circle ."]) == 2
    one_line_error(capsys, "not checkpoint metadata mmtl wrote", field)
