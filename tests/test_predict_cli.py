"""`mmtl predict` as a user drives it: one pair, many pairs from JSONL or a folder, resume, bad rows."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mmtl.cli import main
from mmtl.inference import Predictor
from tests.conftest import micro_overrides


@pytest.fixture(scope="module")
def run_dir(micro_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("predict_run") / "run"
    assert main(["train", *micro_overrides(micro_data, run, steps=2)]) == 0
    return run


def _image(path: Path, color=(200, 30, 30), size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _rows(path: Path) -> dict[str, dict]:
    return {row["id"]: row for row in map(json.loads, path.read_text().splitlines())}


@pytest.fixture()
def pairs_file(tmp_path: Path) -> Path:
    _image(tmp_path / "imgs" / "a.png")
    _image(tmp_path / "imgs" / "b.png", (20, 200, 40))
    (tmp_path / "imgs" / "fake.png").write_text("not an image")
    lines = [
        json.dumps({"id": "a", "image": "imgs/a.png", "text": "anna drew a red circle ."}),
        json.dumps({"id": "b", "image": "imgs/b.png"}),
        json.dumps({"id": "t", "text": "bob saw a blue square near the top ."}),
        json.dumps({"id": "missing", "image": "imgs/nope.png"}),
        json.dumps({"id": "fake", "image": "imgs/fake.png", "text": "x"}),
        json.dumps({"id": "empty", "text": "   "}),
        "{not json",
        json.dumps({"id": "c", "image": "imgs/a.png", "text": "carl drew a green triangle ."}),
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_batch_writes_every_row_and_reports_bad_ones(run_dir: Path, pairs_file: Path, tmp_path: Path,
                                                           capsys) -> None:
    out = tmp_path / "preds.jsonl"
    assert main(["predict", "--checkpoint", str(run_dir), "--input", str(pairs_file), "--output", str(out),
                 "--batch-size", "3", "--no-progress", "--threshold", "0", "--top-k-tags", "2"]) == 0
    rows = _rows(out)
    assert set(rows) == {"a", "b", "t", "missing", "fake", "empty", "line-7", "c"}
    assert "image file not found" in rows["missing"]["error"]
    assert "not a readable image" in rows["fake"]["error"]
    assert "give an image, a text, or both" in rows["empty"]["error"]
    assert "not valid JSON" in rows["line-7"]["error"]
    assert set(rows["a"]) == {"id", "recognition", "captioning", "summarization"}
    assert set(rows["b"]) == {"id", "recognition", "captioning"}  # no text: nothing to summarize
    assert set(rows["t"]) == {"id", "summarization"}  # no image: no tags, no caption
    # threshold 0 keeps every class; --top-k-tags 2 keeps the two best, sorted
    scores = [tag["score"] for tag in rows["a"]["recognition"]]
    assert len(scores) == 2 and scores == sorted(scores, reverse=True)
    assert "8 predictions written" in capsys.readouterr().out


def test_batched_equals_one_at_a_time(run_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    batched, single = tmp_path / "b.jsonl", tmp_path / "s.jsonl"
    common = ["predict", "--checkpoint", str(run_dir), "--input", str(pairs_file), "--no-progress",
              "--threshold", "0.2"]
    assert main([*common, "--output", str(batched), "--batch-size", "8"]) == 0
    assert main([*common, "--output", str(single), "--batch-size", "1"]) == 0
    a, b = _rows(batched), _rows(single)
    for key in ("a", "b", "t", "c"):
        assert a[key]["captioning" if "captioning" in a[key] else "summarization"] == \
            b[key]["captioning" if "captioning" in b[key] else "summarization"]
        assert [t["label"] for t in a[key].get("recognition", [])] == [t["label"] for t in b[key].get("recognition", [])]


def test_rerun_skips_done_ids_and_repairs_partial_line(run_dir: Path, pairs_file: Path, tmp_path: Path,
                                                       capsys) -> None:
    out = tmp_path / "preds.jsonl"
    # as if an earlier run had finished "a" and was killed while writing the next line
    out.write_text(json.dumps({"id": "a", "captioning": "kept"}) + "\n" + '{"id": "b", "capt')
    argv = ["predict", "--checkpoint", str(run_dir), "--input", str(pairs_file), "--output", str(out),
            "--no-progress"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows].count("a") == 1 and rows[0] == {"id": "a", "captioning": "kept"}
    assert len(rows) == 8
    assert "1 skipped" in capsys.readouterr().out
    assert main(argv) == 0  # everything done: nothing new
    assert len(out.read_text().splitlines()) == 8
    assert "0 predictions written" in capsys.readouterr().out


def test_images_dir_and_generation_flags(run_dir: Path, tmp_path: Path) -> None:
    _image(tmp_path / "d" / "x.png")
    _image(tmp_path / "d" / "sub" / "y.jpg", (0, 0, 255))
    (tmp_path / "d" / "notes.txt").write_text("ignored")
    out = tmp_path / "p.jsonl"
    assert main(["predict", "--checkpoint", str(run_dir), "--images", str(tmp_path / "d"), "--output", str(out),
                 "--no-progress", "--tasks", "captioning", "--max-length", "3", "--num-beams", "1",
                 "--no-immediate-repeat", "0", "--repetition-penalty", "1.3"]) == 0
    rows = _rows(out)
    assert set(rows) == {"x.png", "sub/y.jpg"}
    for row in rows.values():
        assert set(row) == {"id", "captioning"}
        assert len(row["captioning"].split()) <= 3


def test_generation_overrides_reach_the_model(run_dir: Path, monkeypatch) -> None:
    predictor = Predictor.from_pretrained(run_dir)
    seen = []
    original = predictor.model.predict

    def spy(batch, names, options):
        seen.append(options)
        return original(batch, names, options)

    monkeypatch.setattr(predictor.model, "predict", spy)
    result = predictor.predict(text="anna drew a red circle .", tasks=["summarization"],
                               generation={"max_length": 5, "top_p": 0.9, "no_repeat_ngram_size": 2},
                               threshold=0.3)
    gen = seen[0].generation
    assert (gen.max_length, gen.top_p, gen.no_repeat_ngram_size, seen[0].threshold) == (5, 0.9, 2, 0.3)
    assert isinstance(result.summary, str)


def test_single_pair_precision_bf16(run_dir: Path, tmp_path: Path, capsys) -> None:
    image = _image(tmp_path / "i.png")
    assert main(["predict", "--checkpoint", str(run_dir), "--image", str(image), "--precision", "bf16",
                 "--json", "--threshold", "0", "--top-k-tags", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["recognition"]) == 1 and isinstance(result["captioning"], str)


@pytest.mark.parametrize("extra, message", [
    (["--image", "IMG", "--tasks", "dancing"], "unknown task dancing"),
    (["--image", "NOTIMG"], "not a readable image"),
    (["--text", "   "], "give --image, --text/--text-file, or both"),
    (["--text-file", "BIN"], "not UTF-8 text"),
    (["--text", "a\x00b\x01c\x02"], "text looks binary"),
    (["--image", "IMG", "--num-beams", "0"], "generation.num_beams must be >= 1"),
    (["--image", "IMG", "--top-p", "1.5"], "generation.top_p must be > 0.0 and <= 1.0"),
    (["--image", "IMG", "--no-immediate-repeat", "-1"], "generation.no_immediate_repeat_size must be >= 0 and <= 1000"),
    (["--image", "IMG", "--repetition-penalty", "0"], "generation.repetition_penalty must be > 0.0 and <= 100.0"),
    (["--image", "IMG", "--threshold", "2"], "threshold must be in [0, 1]"),
    (["--input", "PAIRS"], "need --output"),
    (["--input", "nowhere.jsonl", "--output", "o.jsonl"], "--input file not found"),
    (["--images", "nowhere", "--output", "o.jsonl"], "--images directory not found"),
    (["--image", "IMG", "--device", "cuda:99"], "device 'cuda:99'"),
    (["--image", "IMG", "--device", "tpu"], "unknown device 'tpu'"),
    (["--image", "IMG", "--num-beams", "100000"], "--num-beams is 100000; the most is 8"),
    (["--input", "PAIRS", "--output", "DIR"], "is a directory; give a file path"),
    (["--image", "IMG", "--temperature", "1e-300", "--sample"], "generation.temperature must be >= 0.0001"),
    (["--image", "IMG", "--seed", str(2**70), "--sample"], "generation.seed must fit in 64 bits"),
])
def test_bad_input_one_line_exit_2(run_dir: Path, tmp_path: Path, monkeypatch, capsys, extra, message) -> None:
    monkeypatch.chdir(tmp_path)
    subs = {"IMG": str(_image(tmp_path / "ok.png")), "NOTIMG": str(tmp_path / "n.png"),
            "BIN": str(tmp_path / "b.bin"), "PAIRS": str(tmp_path / "p.jsonl"), "DIR": str(tmp_path)}
    Path(subs["NOTIMG"]).write_bytes(b"\x89PNG garbage")
    Path(subs["BIN"]).write_bytes(bytes(range(256)))
    assert main(["predict", "--checkpoint", str(run_dir), *[subs.get(a, a) for a in extra]]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_bad_checkpoint_dir_exit_2(tmp_path: Path, capsys) -> None:
    broken = tmp_path / "ckpt"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"garbage")
    for checkpoint, message in ((tmp_path / "nowhere", "no checkpoint found"), (broken, "config file not found")):
        assert main(["predict", "--checkpoint", str(checkpoint), "--text", "hello"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_interrupt_then_rerun_finishes_without_repeats(run_dir: Path, pairs_file: Path, tmp_path: Path,
                                                       monkeypatch, capsys) -> None:
    out = tmp_path / "preds.jsonl"
    argv = ["predict", "--checkpoint", str(run_dir), "--input", str(pairs_file), "--output", str(out),
            "--batch-size", "2", "--no-progress"]
    original, calls = Predictor.run, []

    def interrupted_run(self, examples, options):
        calls.append(len(examples))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, examples, options)

    monkeypatch.setattr(Predictor, "run", interrupted_run)
    assert main(argv) == 130
    assert "re-run the same command" in capsys.readouterr().err
    first = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert first == ["a", "b"]  # the first batch was flushed before the interrupt
    monkeypatch.setattr(Predictor, "run", original)
    assert main(argv) == 0
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == sorted({"a", "b", "t", "missing", "fake", "empty", "line-7", "c"}) and len(ids) == 8


def test_inference_decodes_images_like_training_data(tmp_path: Path) -> None:
    """Transparency becomes white at inference exactly as in the loader (one decoder for both)."""
    from data_pipelines.transforms import decode_image
    from mmtl.inference import load_image

    path = tmp_path / "clear.png"
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(path)
    assert load_image(path).getpixel((0, 0)) == decode_image(path.read_bytes()).getpixel((0, 0)) == (255, 255, 255)


def test_unreadable_image_is_one_line(run_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """Permission denied (simulated: the tests run as root, which reads any file)."""
    image = _image(tmp_path / "locked.png")
    real_read = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == "locked.png":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert main(["predict", "--checkpoint", str(run_dir), "--image", str(image)]) == 2
    err = capsys.readouterr().err
    assert "locked.png: permission denied" in err and "Traceback" not in err and err.count("\n") == 1


def test_batch_rows_cannot_read_outside_their_folder(run_dir: Path, tmp_path: Path) -> None:
    outside = _image(tmp_path / "secret" / "s.png")
    inside = tmp_path / "job"
    _image(inside / "ok.png")
    rows = [{"id": "abs", "image": str(outside)}, {"id": "up", "image": "../secret/s.png"},
            {"id": "depth", "text": "x", "depth": "../secret/s.png"}, {"id": "ok", "image": "ok.png"}]
    pairs = inside / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "preds.jsonl"
    base = ["predict", "--checkpoint", str(run_dir), "--input", str(pairs), "--no-progress"]
    assert main([*base, "--output", str(out)]) == 0
    got = _rows(out)
    for key in ("abs", "up", "depth"):
        assert "leads outside" in got[key]["error"] and "--allow-outside-paths" in got[key]["error"]
    assert "error" not in got["ok"]
    allowed = tmp_path / "allowed.jsonl"
    assert main([*base, "--output", str(allowed), "--allow-outside-paths"]) == 0
    got = _rows(allowed)
    assert "error" not in got["abs"] and "error" not in got["up"]


def test_appending_keeps_a_last_line_without_newline(run_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds.jsonl"
    kept = json.dumps({"id": "a", "captioning": "written by hand"})
    out.write_text(json.dumps({"id": "zz", "note": "first"}) + "\n" + kept)  # no newline at the end
    assert main(["predict", "--checkpoint", str(run_dir), "--input", str(pairs_file), "--output", str(out),
                 "--no-progress"]) == 0
    lines = out.read_text().splitlines()
    assert lines[:2] == [json.dumps({"id": "zz", "note": "first"}), kept]
    assert [json.loads(line)["id"] for line in lines].count("a") == 1


def test_whole_word_and_document_ngram_decoding_can_be_turned_off_from_the_command_line() -> None:
    """Both default on, so `mmtl predict` needs --no-whole-words / --no-repeat-document-ngrams to set them off."""
    from mmtl.cli import build_parser
    from mmtl.cli.predict import _generation_overrides

    args = build_parser().parse_args(["predict", "--checkpoint", "RUN", "--no-whole-words",
                                      "--no-repeat-document-ngrams", "--sample"])
    assert _generation_overrides(args) == {"whole_words": False, "repeat_document_ngrams": False, "do_sample": True}
    plain = build_parser().parse_args(["predict", "--checkpoint", "RUN"])
    assert _generation_overrides(plain) == {}  # the checkpoint's eval.generation applies
