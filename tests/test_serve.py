"""`mmtl serve`: real HTTP requests over loopback against a micro model (bounded request counts)."""
from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
from PIL import Image

from mmtl.cli import main
from mmtl.inference import Predictor
from mmtl.serve import ServerLimits, ServeSettings, make_server
from tests.conftest import multipart, post_json, request, serving

LIMITS = ServerLimits(max_body_bytes=200_000, max_pixels=100_000, max_text_chars=500, read_timeout_s=2.0)


@pytest.fixture(scope="module")
def run_dir(micro_run: Path) -> Path:
    return micro_run


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
    ({"text": 3}, 422, "field 'text'"),
    ({"text": "hi", "tasks": "dancing"}, 400, "unknown task dancing"),
    ({"text": "hi", "generation": {"beams": 2}}, 422, "generation.beams"),
    ({"text": "hi", "num_beams": 0}, 422, "field 'num_beams'"),
    ({"text": "hi", "generation": {"num_beams": 64}}, 400, "allows at most 8"),
    ({"text": "hi", "tasks": [{"a": 1}]}, 422, "field 'tasks"),
    ({"text": "hi", "threshold": "high"}, 422, "field 'threshold'"),
    ({"text": "hi", "colour": "red"}, 422, "unknown field(s) colour"),
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
        proc.wait(timeout=60)  # a starved machine shuts down slowly
    for argv, message in ((["--checkpoint", str(tmp_path / "nowhere")], "no checkpoint found"),
                          (["--checkpoint", str(run_dir), "--max-text-chars", "0"], "--max-text-chars must be positive"),
                          (["--checkpoint", str(run_dir), "--max-batch", "0"], "--max-batch must be >= 1")):
        assert main(["serve", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1


# -- hardening (issue #17): conformance, deadlines, limits, disconnects, workers --------------------
def raw_exchange(server, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, return everything the server answers until it closes or goes quiet."""
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" not in b"".join(chunks):
                    break
        except socket.timeout:
            pass
    return b"".join(chunks)


def test_conflicting_duplicate_content_length_is_refused(server) -> None:
    answer = raw_exchange(server, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                  b"Content-Length: 2\r\nContent-Length: 15\r\n\r\n{\"text\": \"hi\"}")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


@pytest.mark.parametrize("body, code, message", [
    (b"[" * 20_000 + b"]" * 20_000, 400, "nested too deeply"),
    (json.dumps({"text": "hi", "seed": 2**70}).encode(), 422, "field 'seed'"),
    (json.dumps({"text": "hi", "do_sample": True, "temperature": 1e-300}).encode(), 422, "field 'temperature'"),
    (b'{"text": "hi", "do_sample": true, "temperature": NaN}', 422, "field 'temperature'"),
    (json.dumps({"text": "hi", "generation": {"seed": -1}}).encode(), 422, "field 'generation.seed'"),
])
def test_hostile_json_values_are_4xx_not_500(server, body: bytes, code: int, message: str) -> None:
    """A body that does not parse is 400; a field that fails the schema is 422."""
    status, answer = request(server, "/v1/predict", body, "application/json")
    assert status == code and message in answer["error"], answer


def test_a_client_dribbling_bytes_is_dropped(server) -> None:
    """read_timeout_s=2 here (30 s by default): the headers and body must arrive within it."""
    host, port = server.server_address[:2]
    start = time.monotonic()
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.settimeout(0.4)
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")
        closed = False
        while time.monotonic() - start < 8 and not closed:
            try:
                sock.sendall(b"X")
                closed = sock.recv(1024) == b""
            except socket.timeout:
                continue
            except OSError:
                closed = True
    assert closed and time.monotonic() - start < 6


def test_a_dribbler_whose_bytes_always_wait_in_the_socket_is_still_dropped(server, monkeypatch) -> None:
    """Bytes waiting in the socket at the deadline may mean a starved server, or a client timing its
    bytes to the deadline: the extension they earn is bounded (one more read_timeout_s)."""
    from mmtl.serve.limits import DeadlineH11Protocol
    monkeypatch.setattr(DeadlineH11Protocol, "_bytes_wait_in_socket", lambda self: True)
    host, port = server.server_address[:2]
    start = time.monotonic()
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")
        answer = sock.recv(1024)
    elapsed = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert LIMITS.read_timeout_s * 2 - 0.5 < elapsed < LIMITS.read_timeout_s * 2 + 2


def test_multipart_part_count_and_duplicates_are_limited(server) -> None:
    start = time.monotonic()
    body, ctype = multipart({f"f{i}": "x" for i in range(2000)})
    status, answer = request(server, "/v1/predict", body, ctype)
    assert status == 400 and "fields" in answer["error"].lower() and time.monotonic() - start < 10
    boundary = "b0undary"
    twice = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n{v}\r\n' for v in "ab")
    status, answer = request(server, "/v1/predict", (twice + f"--{boundary}--\r\n").encode(),
                             f"multipart/form-data; boundary={boundary}")
    assert status == 400 and "given twice" in answer["error"]


def test_disconnecting_clients_log_no_traceback(server, caplog) -> None:
    caplog.set_level(logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "asyncio"):
        logging.getLogger(name).addHandler(caplog.handler)
    try:
        payload = json.dumps({"image": base64.b64encode(png_bytes()).decode(), "text": "hi"}).encode()
        for _ in range(6):  # the request arrives whole, the client is gone before the answer
            host, port = server.server_address[:2]
            with socket.create_connection((host, port), timeout=10) as sock:
                sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
        time.sleep(1.0)
        assert post_json(server, {"text": "still here ."})[0] == 200
    finally:
        for name in ("uvicorn", "uvicorn.error", "asyncio"):
            logging.getLogger(name).removeHandler(caplog.handler)
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage() or "Broken" in r.getMessage()]


def test_concurrency_limit_answers_503(predictor: Predictor) -> None:
    limits = ServerLimits(max_concurrency=2)
    with serving(make_server(predictor, "127.0.0.1", 0, limits)) as srv:
        host, port = srv.server_address[:2]
        idle = [socket.create_connection((host, port), timeout=10) for _ in range(2)]
        try:
            time.sleep(0.3)
            answer = raw_exchange(srv, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 503"), answer[:100]
        finally:
            for sock in idle:
                sock.close()
        time.sleep(0.3)
        assert request(srv, "/healthz")[0] == 200


def test_serve_with_two_worker_processes(run_dir: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "mmtl", "serve", "--checkpoint", str(run_dir), "--port", "0",
                             "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "2 worker process(es)" in line, proc.stderr.read() if proc.poll() is not None else line
        url = line.split(" on ", 1)[1].split()[0]
        deadline = time.monotonic() + 180
        while True:  # the workers load the model after the socket is announced
            try:
                with urllib.request.urlopen(url + "/v1/info", timeout=10) as resp:
                    assert set(json.loads(resp.read())["tasks"]) == {"recognition", "captioning", "summarization"}
                break
            except OSError:  # refused, reset or timed out (URLError is an OSError): still loading
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_worker_processes_get_the_settings_serve_was_given() -> None:
    """``mmtl serve --workers N`` hands its settings to each worker as JSON: nothing may fall back to a default."""
    settings = ServeSettings("runs/x", ServerLimits(max_beams=3, max_pixels=1000), 4, 2.5, "cuda:1", "bf16")
    assert ServeSettings.from_json(settings.to_json()) == settings


def test_building_a_server_leaves_the_host_processs_log_handlers_open() -> None:
    """uvicorn's default log config ran logging.config.dictConfig, which closes every handler of the process
    (logging.shutdown): an application that built an mmtl server had its own handlers closed (pytest's
    capture of stderr among them, through absl's handler: tests/test_finetune.py alone failed on it)."""
    from mmtl.serve import ServerLimits
    from mmtl.serve.server import uvicorn_config

    class Recording(logging.Handler):
        closed = False

        def emit(self, record: logging.LogRecord) -> None:
            pass

        def close(self) -> None:
            self.closed = True
            super().close()

    handler = Recording()
    logging.getLogger("host-app").addHandler(handler)
    try:
        uvicorn_config(lambda scope, receive, send: None, ServerLimits())
        assert not handler.closed
        assert logging.getLogger("uvicorn.error").getEffectiveLevel() == logging.WARNING
    finally:
        logging.getLogger("host-app").removeHandler(handler)
