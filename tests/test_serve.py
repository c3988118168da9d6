"""`mmtl serve`: real HTTP requests over loopback against a micro model (bounded request counts)."""
from __future__ import annotations

import base64
import http.client
import io
import json
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
from PIL import Image

from mmtl.cli import main
from mmtl.inference import Predictor
from mmtl.serve import ServerLimits, make_server
from tests.conftest import micro_overrides, multipart, post_json, request, serving

LIMITS = ServerLimits(max_body_bytes=200_000, max_pixels=100_000, max_text_chars=500)


@pytest.fixture(scope="module")
def run_dir(micro_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("serve_run") / "run"
    assert main(["train", *micro_overrides(micro_data, run, steps=2)]) == 0
    return run


@pytest.fixture(scope="module")
def predictor(run_dir: Path) -> Predictor:
    return Predictor.from_pretrained(run_dir)


@pytest.fixture(scope="module")
def server(predictor: Predictor) -> Iterator[Any]:
    with serving(make_server(predictor, "127.0.0.1", 0, LIMITS, max_batch=8, max_wait_ms=100)) as srv:
        yield srv


def png_bytes(color=(200, 30, 30), size=(40, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def test_health_info_openapi_and_unknown_routes(server, predictor: Predictor) -> None:
    assert request(server, "/healthz") == (200, {"status": "ok", "uptime_s": pytest.approx(0, abs=600)})
    status, info = request(server, "/v1/info")
    assert status == 200
    assert set(info["tasks"]) == {"recognition", "captioning", "summarization"}
    assert info["classes"] == predictor.components.classes and len(info["classes"]) > 0
    assert info["parameters"]["total"] == sum(p.numel() for p in predictor.model.parameters())
    assert info["limits"]["max_text_chars"] == 500
    status, spec = request(server, "/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.") and "post" in spec["paths"]["/v1/predict"]
    status, body = request(server, "/nope")
    assert status == 404 and "/nope" in body["error"]
    assert request(server, "/v1/predict")[0] == 405
    assert request(server, "/healthz", b"{}", "application/json")[0] == 405


def test_multipart_and_json_match_the_predictor(server, predictor: Predictor) -> None:
    image, text = png_bytes(), "anna drew a red circle near the top ."
    expected = predictor.predict(image=Image.open(io.BytesIO(image)), text=text).to_dict()
    body, ctype = multipart({"text": text}, image)
    status, out = request(server, "/v1/predict", body, ctype)
    assert status == 200 and out["predictions"] == expected
    encoded = base64.b64encode(image).decode()
    for value in (encoded, "data:image/png;base64," + encoded):
        status, out = post_json(server, {"image": value, "text": text})
        assert status == 200 and out["predictions"] == expected
    # text only: tasks that need the image are skipped
    status, out = post_json(server, {"text": text})
    assert status == 200 and set(out["predictions"]) == {"summarization"}
    # options travel: one task, every class, at most two tags
    body, ctype = multipart({"tasks": "recognition", "threshold": "0", "top_k_tags": "2"}, image)
    status, out = request(server, "/v1/predict", body, ctype)
    assert status == 200 and set(out["predictions"]) == {"recognition"} and len(out["predictions"]["recognition"]) == 2
    status, out = post_json(server, {"image": encoded, "tasks": ["captioning"], "generation": {"max_length": 2}})
    assert status == 200 and len(out["predictions"]["captioning"].split()) <= 2


def test_concurrent_requests_are_batched(server, predictor: Predictor) -> None:
    # 16 clients at once: more than socketserver's default listen backlog of 5
    images = [png_bytes((16 * i, 255 - 16 * i, (97 * i) % 256)) for i in range(16)]
    expected = [predictor.predict(image=Image.open(io.BytesIO(b)), tasks=["captioning"]).caption for b in images]
    batches_before = server.app.batcher.batches

    def one(image: bytes) -> tuple[int, dict]:
        return post_json(server, {"image": base64.b64encode(image).decode(), "tasks": "captioning"})

    with ThreadPoolExecutor(len(images)) as pool:
        answers = list(pool.map(one, images))
    assert [status for status, _ in answers] == [200] * len(images)
    assert [out["predictions"]["captioning"] for _, out in answers] == expected
    assert max(out["batch_size"] for _, out in answers) > 1
    assert server.app.batcher.batches - batches_before < len(images)


def test_mixed_options_in_one_window_run_separately(server) -> None:
    image = base64.b64encode(png_bytes()).decode()
    payloads = [{"image": image, "tasks": "recognition", "threshold": 0},
                {"image": image, "tasks": "captioning"}] * 2
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda p: post_json(server, p), payloads))
    for payload, (status, out) in zip(payloads, answers):
        assert status == 200 and set(out["predictions"]) == {payload["tasks"]}


def bomb_png() -> bytes:
    """1000x1000 pixels (over the 100k-pixel test limit) in a few kilobytes."""
    return png_bytes(0, (1000, 1000), mode="1")


@pytest.mark.parametrize("payload, status, message", [
    ({"text": "x" * 501}, 413, "limit is 500"),
    ({"image": base64.b64encode(bomb_png()).decode()}, 413, "1000000 pixels"),
    ({"image": base64.b64encode(b"GIF89a not really").decode()}, 400, "not a readable image"),
    ({"image": "@@@"}, 400, "not valid base64"),
    ({"text": "   "}, 400, "give an image, a text, or both"),
    ({}, 400, "give an image, a text, or both"),
    ({"text": "a\x00\x01\x02\x03"}, 400, "text looks binary"),
    ({"text": 3}, 400, "field 'text'"),
    ({"text": "hi", "tasks": "dancing"}, 400, "unknown task dancing"),
    ({"text": "hi", "generation": {"beams": 2}}, 400, "generation.beams"),
    ({"text": "hi", "num_beams": 0}, 400, "field 'num_beams'"),
    ({"text": "hi", "generation": {"num_beams": 64}}, 400, "allows at most 8"),
    ({"text": "hi", "tasks": [{"a": 1}]}, 400, "field 'tasks"),
    ({"text": "hi", "threshold": "high"}, 400, "field 'threshold'"),
    ({"text": "hi", "colour": "red"}, 400, "unknown field(s) colour"),
])
def test_bad_json_requests_are_4xx_with_a_message(server, payload, status, message) -> None:
    got, body = post_json(server, payload)
    assert (got, body["status"]) == (status, status) and message in body["error"]


def test_bad_bodies_and_headers(server) -> None:
    assert request(server, "/v1/predict", b"{nope", "application/json")[0] == 400
    assert request(server, "/v1/predict", b"[1, 2]", "application/json")[0] == 400
    status, body = request(server, "/v1/predict", b"text=hi", "application/x-www-form-urlencoded")
    assert status == 415 and "multipart/form-data" in body["error"]
    assert request(server, "/v1/predict", b"--x\r\n", "multipart/form-data")[0] == 400
    body, ctype = multipart({"text": "hi"}, b"\x00\x01 not an image")
    status, out = request(server, "/v1/predict", body, ctype)
    assert status == 400 and "not a readable image" in out["error"]
    # a huge declared body is refused from the header alone, before anything is read
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.putrequest("POST", "/v1/predict")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(10**9))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and "limit is 200000" in json.loads(resp.read())["error"]
    conn.close()
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.putrequest("POST", "/v1/predict", skip_accept_encoding=True)
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 411
    conn.close()


def test_server_survives_and_still_answers(server) -> None:
    """After all the bad requests above, the worker thread still serves good ones."""
    status, out = post_json(server, {"text": "bob saw a blue square ."})
    assert status == 200 and isinstance(out["predictions"]["summarization"], str)


def test_serve_cli_process(run_dir: Path, tmp_path: Path, capsys) -> None:
    """`mmtl serve` in a real process: prints its URL, answers /healthz; a bad checkpoint exits 2."""
    proc = subprocess.Popen([sys.executable, "-m", "mmtl", "serve", "--checkpoint", str(run_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving" in line, proc.stderr.read() if proc.poll() is not None else line
        url = line.split(" on ", 1)[1].split()[0]
        with urllib.request.urlopen(url + "/healthz", timeout=10) as resp:
            assert json.loads(resp.read())["status"] == "ok"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    for argv, message in ((["--checkpoint", str(tmp_path / "nowhere")], "no checkpoint found"),
                          (["--checkpoint", str(run_dir), "--max-text-chars", "0"], "--max-text-chars must be positive"),
                          (["--checkpoint", str(run_dir), "--max-batch", "0"], "--max-batch must be >= 1")):
        assert main(["serve", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1
