"""HTTP server: a JSON API over a Predictor, with dynamic batching, input limits and a web page.

Standard library only (``http.server.ThreadingHTTPServer``): one thread per connection parses and
checks the request and decodes the image; a single worker thread runs the model on batches of
requests collected for up to ``max_batch`` requests or ``max_wait_ms`` milliseconds.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Collection

from data_pipelines.loader import Example
from mmtl import __version__
from mmtl.config import GenerationConfig
from mmtl.errors import MMTLError
from mmtl.inference import DEFAULT_MAX_PIXELS, InputTooLarge, PredictOptions, Predictor

log = logging.getLogger(__name__)

WEB_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
             "style.css": "text/css; charset=utf-8"}
GENERATION_FIELDS = {f.name: f.type for f in dataclasses.fields(GenerationConfig)}


@dataclass
class ServerLimits:
    """Per-request limits; each violation is a 4xx JSON error."""

    max_body_bytes: int = 10 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_text_chars: int = 20_000
    max_beams: int = 8
    max_queue: int = 512
    request_timeout_s: float = 120.0


class HTTPError(Exception):
    """An error answered to the client as ``{"error": message, "status": code}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- dynamic batching ----------------------------------------------------------------------------
@dataclass
class _Job:
    example: Example
    options: PredictOptions
    future: Future


class DynamicBatcher:
    """Collects submitted examples into batches and runs them on one worker thread.

    The worker takes the first waiting job, then keeps collecting until it has ``max_batch`` jobs
    or ``max_wait_ms`` has passed; jobs with different options in one collection run as separate
    batches. Under load the queue fills while the model runs, so batches grow with the load.
    """

    _STOP = object()

    def __init__(self, predictor: Predictor, max_batch: int = 16, max_wait_ms: float = 5.0,
                 max_queue: int = 512) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise MMTLError(f"--max-batch must be >= 1 and --max-wait-ms >= 0, got {max_batch} and {max_wait_ms}")
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.batches = 0
        self.requests = 0
        self._thread = threading.Thread(target=self._loop, name="mmtl-batcher", daemon=True)
        self._thread.start()

    def submit(self, example: Example, options: PredictOptions) -> Future:
        """Queue one example; the future resolves to ``(PredictionResult, size of the batch it ran in)``.

        Raises HTTPError 503 when the queue is full."""
        job = _Job(example, options, Future())
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise HTTPError(503, "server busy: too many requests waiting; retry later") from None
        return job.future

    def close(self) -> None:
        """Stop the worker after the jobs already queued."""
        self.queue.put(self._STOP)
        self._thread.join(timeout=30)

    def _collect(self) -> tuple[list[_Job], bool]:
        first = self.queue.get()
        if first is self._STOP:
            return [], True
        jobs, deadline = [first], time.monotonic() + self.max_wait
        while len(jobs) < self.max_batch:
            try:
                remaining = deadline - time.monotonic()
                job = self.queue.get_nowait() if remaining <= 0 else self.queue.get(timeout=remaining)
            except queue.Empty:
                break
            if job is self._STOP:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            jobs, stop = self._collect()
            groups: dict[str, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.options.key(), []).append(job)
            for group in groups.values():
                self._run(group)

    def _run(self, group: list[_Job]) -> None:
        try:
            results = self.predictor.run([job.example for job in group], group[0].options)
        except Exception as exc:  # noqa: BLE001 - reported to each waiting request, the worker lives on
            log.exception("prediction batch failed")
            for job in group:
                job.future.set_exception(exc)
            return
        self.batches += 1
        self.requests += len(group)
        for job, result in zip(group, results):
            job.future.set_result((result, len(group)))


# -- request parsing -----------------------------------------------------------------------------
def _form_value(name: str, value: str) -> Any:
    """A multipart text field converted to the type of the option it sets."""
    kind = GENERATION_FIELDS.get(name, {"threshold": "float", "top_k_tags": "int"}.get(name, "str"))
    kind = getattr(kind, "__name__", kind)
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        raise HTTPError(400, f"field {name!r} must be a number, got {value[:40]!r}") from None
    if kind == "bool":
        if value.strip().lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise HTTPError(400, f"field {name!r} must be true or false, got {value[:40]!r}")
        return value.strip().lower() in ("1", "true", "yes", "on")
    return value


def _decode_text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, f"field {name!r} is not UTF-8 text") from None


def parse_multipart(content_type: str, body: bytes, files: Collection[str] = ("image",)) -> dict[str, Any]:
    """Fields of a multipart/form-data body: the ``files`` (image, further modalities) as bytes, every
    other field as text."""
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise HTTPError(400, "malformed multipart/form-data body (missing or wrong boundary)")
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        if name in files:
            if payload:  # a browser sends an empty file part when no file was chosen
                fields[name] = payload
        else:
            fields[name] = _decode_text(payload, name)
    return fields


def parse_json_body(body: bytes, files: Collection[str] = ("image",)) -> dict[str, Any]:
    """Fields of a JSON body; the ``files`` (image, further modalities) are base64 (a ``data:`` URL
    prefix is allowed)."""
    try:
        fields = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise HTTPError(400, "JSON body must be an object with fields image (base64) and/or text")
    for name in files:
        value = fields.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise HTTPError(400, f"field {name!r} must be a base64 string")
        if value.startswith("data:") and "," in value:
            value = value.split(",", 1)[1]
        try:
            fields[name] = base64.b64decode(value, validate=True) if value else None
        except (binascii.Error, ValueError):
            raise HTTPError(400, f"field {name!r} is not valid base64") from None
    return fields


def request_options(predictor: Predictor, fields: dict[str, Any], limits: ServerLimits) -> PredictOptions:
    """Tasks, generation overrides, threshold and top_k_tags from request fields."""
    generation = fields.get("generation")
    if isinstance(generation, str):  # multipart: a JSON object as text
        try:
            generation = json.loads(generation)
        except json.JSONDecodeError:
            raise HTTPError(400, "field 'generation' must be a JSON object") from None
    if generation is not None and not isinstance(generation, dict):
        raise HTTPError(400, "field 'generation' must be an object")
    generation = dict(generation or {})
    for name in GENERATION_FIELDS:
        if name in fields:
            value = fields[name]
            generation[name] = _form_value(name, value) if isinstance(value, str) else value
    tasks = fields.get("tasks")
    if tasks is not None and not (isinstance(tasks, str) or (
            isinstance(tasks, list) and all(isinstance(t, str) for t in tasks))):
        raise HTTPError(400, "field 'tasks' must be a list of task names or a comma-separated string")
    numbers = {}
    for name in ("threshold", "top_k_tags"):
        value = fields.get(name)
        if isinstance(value, str):
            value = _form_value(name, value) if value.strip() else None
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise HTTPError(400, f"field {name!r} must be a number")
        numbers[name] = value
    options = predictor.options(tasks, generation or None, numbers["threshold"], numbers["top_k_tags"])
    if options.eval.generation.num_beams > limits.max_beams:
        raise HTTPError(400, f"num_beams is {options.eval.generation.num_beams}; this server allows at most "
                             f"{limits.max_beams}")
    return options


# -- the app -------------------------------------------------------------------------------------
class App:
    """Routes, limits and the batcher of one served model."""

    def __init__(self, predictor: Predictor, limits: ServerLimits | None = None, max_batch: int = 16,
                 max_wait_ms: float = 5.0) -> None:
        self.predictor = predictor
        self.limits = limits or ServerLimits()
        self.batcher = DynamicBatcher(predictor, max_batch, max_wait_ms, self.limits.max_queue)
        self.started = time.time()
        # modalities a fine-tuned model reads besides image and text (e.g. depth): file fields named after them
        self.further = tuple(m for m in predictor.model.modalities if m not in ("image", "text"))

    def info(self) -> dict[str, Any]:
        return {
            **self.predictor.info(), "mmtl_version": __version__,
            "limits": dataclasses.asdict(self.limits),
            "batching": {"max_batch": self.batcher.max_batch, "max_wait_ms": self.batcher.max_wait * 1000,
                         "batches_run": self.batcher.batches, "requests_served": self.batcher.requests},
        }

    def predict(self, content_type: str, body: bytes) -> dict[str, Any]:
        start = time.perf_counter()
        media = content_type.split(";", 1)[0].strip().lower()
        files = ("image", *self.further)
        if media == "application/json":
            fields = parse_json_body(body, files)
        elif media == "multipart/form-data":
            fields = parse_multipart(content_type, body, files)
        else:
            raise HTTPError(415, f"unsupported Content-Type {media or '(none)'!r}; "
                                 "use multipart/form-data or application/json")
        valid = [*files, "text", "tasks", "threshold", "top_k_tags", "generation", *GENERATION_FIELDS]
        unknown = set(fields) - set(valid)
        if unknown:
            raise HTTPError(400, f"unknown field(s) {', '.join(sorted(unknown))}; valid: {', '.join(valid)}")
        text = fields.get("text")
        if text is not None and not isinstance(text, str):
            raise HTTPError(400, "field 'text' must be a string")
        options = request_options(self.predictor, fields, self.limits)
        example = self.predictor.prepare(fields.get("image"), text, max_pixels=self.limits.max_pixels,
                                         max_text_chars=self.limits.max_text_chars,
                                         inputs={m: fields[m] for m in self.further if fields.get(m) is not None})
        future = self.batcher.submit(example, options)
        try:
            result, batch_size = future.result(timeout=self.limits.request_timeout_s)
        except FutureTimeout:
            raise HTTPError(503, f"prediction took longer than {self.limits.request_timeout_s:.0f}s") from None
        return {"predictions": result.to_dict(), "batch_size": batch_size,
                "time_ms": round((time.perf_counter() - start) * 1000, 2)}

    def close(self) -> None:
        self.batcher.close()


class Handler(BaseHTTPRequestHandler):
    """Maps HTTP requests to :class:`App` calls; every error is a JSON body with a 4xx/5xx status."""

    protocol_version = "HTTP/1.1"
    server_version = f"mmtl/{__version__}"
    timeout = 60  # seconds a client may stall mid-request before its connection is dropped
    server: "MMTLServer"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, close: bool = False) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", close)

    def _error(self, status: int, message: str, close: bool = False) -> None:
        self._json(status, {"error": message, "status": status}, close)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        path = self.path.split("?", 1)[0]
        app = self.server.app
        if path == "/healthz":
            self._json(200, {"status": "ok", "uptime_s": round(time.time() - app.started, 1)})
        elif path == "/v1/info":
            self._json(200, app.info())
        elif path == "/openapi.json":
            self._json(200, openapi_spec())
        elif path == "/" or path.lstrip("/") in WEB_FILES:
            name = path.lstrip("/") or "index.html"
            self._send(200, resources.files("mmtl").joinpath("web", name).read_bytes(), WEB_FILES[name])
        elif path == "/v1/predict":
            self._error(405, "use POST for /v1/predict")
        else:
            self._error(404, f"no route {path!r}; see /openapi.json")

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path != "/v1/predict":
            self._error(404 if path not in ("/", "/healthz", "/v1/info", "/openapi.json") else 405,
                        f"no POST route {path!r}; POST /v1/predict")
            return
        app = self.server.app
        limits = app.limits
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._error(411, "chunked bodies are not accepted; send Content-Length", close=True)
            return
        length_text = self.headers.get("Content-Length")
        try:
            length = int(length_text) if length_text is not None else -1
        except ValueError:
            length = -1
        if length < 0:
            self._error(411, "Content-Length header required", close=True)
            return
        if length > limits.max_body_bytes:
            self._error(413, f"request body is {length} bytes; the limit is {limits.max_body_bytes}", close=True)
            return
        body = self.rfile.read(length)
        if len(body) < length:
            self._error(400, "request body shorter than Content-Length", close=True)
            return
        try:
            self._json(200, app.predict(self.headers.get("Content-Type", ""), body))
        except HTTPError as exc:
            self._error(exc.status, exc.message)
        except InputTooLarge as exc:
            self._error(413, str(exc))
        except MMTLError as exc:
            self._error(400, str(exc))
        except Exception:  # noqa: BLE001 - a bug: log it, answer without internals
            log.exception("unexpected error in /v1/predict")
            self._error(500, "internal error while predicting (see the server log)")


class MMTLServer(ThreadingHTTPServer):
    """A threading HTTP server that owns an :class:`App`."""

    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 resets connections when more clients connect at once
    request_queue_size = 128

    def __init__(self, app: App, host: str = "127.0.0.1", port: int = 8000) -> None:
        self.app = app
        try:
            super().__init__((host, port), Handler)
        except OSError as exc:
            app.close()
            raise MMTLError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def server_close(self) -> None:
        super().server_close()
        self.app.close()


def make_server(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000,
                limits: ServerLimits | None = None, max_batch: int = 16, max_wait_ms: float = 5.0) -> MMTLServer:
    """A ready server (port 0 picks a free port; see ``.url``). Call ``serve_forever()``, then ``shutdown()``
    and ``server_close()``."""
    return MMTLServer(App(predictor, limits, max_batch, max_wait_ms), host, port)


def openapi_spec() -> dict[str, Any]:
    """The OpenAPI 3.1 description of the API."""
    error = {"$ref": "#/components/schemas/Error"}
    gen_props = {name: {"type": {"int": "integer", "float": "number", "bool": "boolean"}.get(
        getattr(tp, "__name__", tp), "string")} for name, tp in GENERATION_FIELDS.items()}
    options = {
        "text": {"type": "string", "description": "paired text (the document to summarize)"},
        "tasks": {"type": "string", "description": "comma-separated task names (default: all)"},
        "threshold": {"type": "number", "minimum": 0, "maximum": 1},
        "top_k_tags": {"type": "integer", "minimum": 0},
        **gen_props,
    }
    errors = {str(code): {"description": text, "content": {"application/json": {"schema": error}}}
              for code, text in ((400, "bad input"), (411, "no Content-Length"), (413, "a size limit exceeded"),
                                 (415, "unsupported Content-Type"), (503, "server busy"))}
    return {
        "openapi": "3.1.0",
        "info": {"title": "mmtl inference API", "version": __version__,
                 "description": "Recognition tags, captions and summaries from a trained mmtl model."},
        "paths": {
            "/v1/predict": {"post": {
                "summary": "Predict on one image-text pair",
                "description": "A fine-tuned model's further modalities (GET /v1/info, 'modalities') are file "
                               "fields named after them, like image: e.g. depth (a PNG depth map) or audio (wav/flac).",
                "requestBody": {"required": True, "content": {
                    "multipart/form-data": {"schema": {"type": "object", "properties": {
                        "image": {"type": "string", "format": "binary"}, **options}}},
                    "application/json": {"schema": {"type": "object", "properties": {
                        "image": {"type": "string", "contentEncoding": "base64"},
                        **options, "tasks": {"type": "array", "items": {"type": "string"}},
                        "generation": {"type": "object", "properties": gen_props}}}},
                }},
                "responses": {"200": {"description": "predictions", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Prediction"}}}}, **errors},
            }},
            "/v1/info": {"get": {"summary": "Tasks, classes, parameter counts, limits",
                                 "responses": {"200": {"description": "model information"}}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}},
            "/": {"get": {"summary": "The web page", "responses": {"200": {"description": "HTML"}}}},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}},
            "Prediction": {"type": "object", "properties": {
                "predictions": {"type": "object", "description": "task name -> output; tags are "
                                "[{label, score}], captions and summaries strings"},
                "batch_size": {"type": "integer", "description": "requests served by the same forward pass"},
                "time_ms": {"type": "number"}}},
        }},
    }


def serve(predictor: Predictor, host: str, port: int, limits: ServerLimits, max_batch: int,
          max_wait_ms: float) -> None:
    """Serve until Ctrl-C."""
    server = make_server(predictor, host, port, limits, max_batch, max_wait_ms)
    print(f"serving {', '.join(predictor.tasks)} on {server.url} (web page at /, API at /v1/predict); "
          "Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        server.server_close()
