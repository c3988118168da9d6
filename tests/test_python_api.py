"""The Python API (mmtl.api): the README's "From Python" flow runs as written, on micro shards."""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import mmtl
from mmtl import api
from mmtl.errors import MMTLError
from tests.conftest import MICRO_SIZES

REPO = Path(__file__).resolve().parents[1]
# what makes the README's flow a seconds-long run (the README's own overrides still apply)
MICRO = ["model.preset=micro", "train.steps=3", "data.batch_size=8", "train.log_every=1", "train.progress=false",
         "eval.max_samples=16", "train.warmup_steps=1", "model.decoder.max_length=48", "eval.generation.max_length=8",
         "validation.max_samples=16"]


def readme_python_flow() -> str:
    """The first ```python block of the README's "From Python" section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def first_png(shards: Path) -> bytes:
    """The image of the first sample of the first shard."""
    with tarfile.open(sorted(shards.glob("*.tar"))[0]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".png"))
        return tar.extractfile(member).read()


def test_the_readme_python_flow_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    real_load, real_synth = api.load_config, api.synthesize
    monkeypatch.setattr(api, "load_config", lambda path=None, overrides=None: real_load(
        path, [*api._override_strings(overrides), *MICRO]))
    monkeypatch.setattr(api, "synthesize", lambda out, **kw: real_synth(
        out, **MICRO_SIZES, image_size=32, difficulty="easy", seed=1))
    monkeypatch.chdir(tmp_path)
    code = readme_python_flow()
    assert "mmtl.train(config)" in code and "mmtl.evaluate(" in code and "Predictor.from_pretrained" in code
    (tmp_path / "data").mkdir()
    namespace: dict = {}
    # the README's scene.png: written once the data set exists (the first line of the flow writes it)
    end = code.index("\n", code.index("mmtl.synthesize("))
    first, rest = code[:end], code[end:]
    exec(first, namespace)  # noqa: S102 - the README's own code
    (tmp_path / "scene.png").write_bytes(first_png(tmp_path / "data" / "shapes"))
    exec(rest, namespace)  # noqa: S102
    out = capsys.readouterr().out
    run, report, single = namespace["run"], namespace["report"], namespace["single"]
    assert isinstance(run, mmtl.TrainRun) and (run.run_dir / "checkpoints" / "LATEST").is_file()
    tasks = {"recognition", "captioning", "summarization"}
    assert set(run.final_losses) == tasks | {"total"}
    assert isinstance(report, mmtl.Evaluation) and set(report.metrics) == tasks
    assert report.delta_m is not None and f"Δm = {report.delta_m:+.2%}" in out
    assert all(v["vs_single_task"] in ("ok", "regressed") for v in report.verdicts.values())
    assert set(single.metrics) == tasks and single.path.name == "baselines.json"
    assert namespace["result"].tags is not None and namespace["result"].summary is not None
    assert (namespace["model_dir"] / "model.safetensors").is_file()
    card = (run.run_dir / "README.md").read_text()
    assert "single-task model" in card and report.primary["recognition"] in card  # evaluate recorded its metrics


def test_import_mmtl_is_cheap_and_lists_the_api() -> None:
    code = "import sys, mmtl; print('torch' in sys.modules, sorted(set(mmtl.__all__)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    torch_loaded, names = out.split(" ", 1)
    assert torch_loaded == "False"
    for name in ("load_config", "train", "evaluate", "baselines", "finetune", "export", "Predictor"):
        assert name in names


def test_api_functions_are_not_shadowed_by_modules() -> None:
    import mmtl.finetuning  # noqa: F401
    import mmtl.single_task  # noqa: F401

    assert mmtl.baselines is api.baselines and mmtl.finetune is api.finetune and mmtl.export is api.export


def test_load_config_takes_a_mapping_or_a_list_and_refuses_bad_keys() -> None:
    by_map = mmtl.load_config(None, {"train.steps": 7, "model.preset": "micro", "name": "true", "train.loggers": []})
    by_list = mmtl.load_config(None, ["train.steps=7", "model.preset=micro", "name='true'", "train.loggers=[]"])
    assert by_map.to_dict() == by_list.to_dict()
    assert by_map.name == "true" and by_map.train.steps == 7  # a string that YAML would read as a bool stays a string
    with pytest.raises(MMTLError, match="train.stepz"):
        mmtl.load_config(None, {"train.stepz": 1})
    with pytest.raises(MMTLError, match="list of key=value"):
        mmtl.load_config(None, "train.steps=3")


def test_evaluate_refuses_a_bad_baselines_file_before_loading_the_model(tmp_path: Path) -> None:
    bad = tmp_path / "baselines.json"
    bad.write_text(json.dumps({"tasks": {"recognition": {}}}))
    with pytest.raises(MMTLError, match="not a baselines file"):
        mmtl.evaluate(tmp_path / "no-such-run", baselines=bad)


def test_finetune_checks_its_keyword_arguments(tmp_path: Path) -> None:
    with pytest.raises(MMTLError, match="finetune.strategy"):
        mmtl.finetune(tmp_path, strategy="sideways")


def test_synthesize_keeps_an_existing_data_set(tmp_path: Path) -> None:
    info = mmtl.synthesize(tmp_path / "d", train=8, val=0, test=4, image_size=32)
    again = mmtl.synthesize(tmp_path / "d", train=99)
    assert info["splits"]["train"]["samples"] == again["splits"]["train"]["samples"] == 8
    assert io.BytesIO(first_png(tmp_path / "d")).read(8) == b"\x89PNG\r\n\x1a\n"
