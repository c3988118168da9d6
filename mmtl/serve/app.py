"""The ASGI application (FastAPI): routes, request parsing and limits over a Predictor.

Request bodies are streamed: multipart files are spooled to disk past 1 MiB by python-multipart,
JSON bodies by :func:`_spool_body`. Only ``max_decoding`` requests with a large input (a body part
over 1 MiB, or an image over 2 megapixels by its header) read and decode it at a time, so memory
stays bounded however many uploads arrive at once; small requests never wait for them.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import functools
import io
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import IO, Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from data_pipelines.loader import Example
from mmtl.version import __version__
from mmtl.errors import MMTLError
from mmtl.inference import DEFAULT_MAX_PIXELS, InputTooLarge, PredictOptions, Predictor
from mmtl.serve.batching import DynamicBatcher, ServerBusy
from mmtl.serve.forms import read_form
from mmtl.serve.limits import RETRY_AFTER_S, QuietCancellation, RequestLimits
from mmtl.serve.schemas import (
    GENERATION_NAMES, ErrorBody, GenerationOptions, Health, Info, PredictForm, PredictJSON, PredictResponse,
)

WEB_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
             "style.css": "text/css; charset=utf-8"}
SPOOL_IN_MEMORY = 1024 * 1024  # bytes of a JSON body kept in memory before it spills to a temp file
LARGE_INPUT_BYTES = 1024 * 1024  # a body (JSON) or file part (multipart) over this is a large input
LARGE_INPUT_PIXELS = 2_000_000  # so is an image with more pixels than this (6 MB decoded)


@dataclass
class ServerLimits:
    """Per-request and connection limits; a request over one is answered 4xx/503 with a JSON error."""

    max_body_bytes: int = 10 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_text_chars: int = 20_000
    max_beams: int = 8
    max_queue: int = 512
    request_timeout_s: float = 120.0
    # connections plus requests in flight (uvicorn's limit_concurrency); more are answered 503
    max_concurrency: int = 256
    max_parts: int = 16  # parts of a multipart body
    read_timeout_s: float = 30.0  # a request's headers and body must arrive within this
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    max_decoding: int = 4  # requests reading and decoding a large input at once (bounds memory)
    max_header_bytes: int = 32 * 1024  # request line and headers together (431 above; 400 far above)
    max_headers: int = 100  # header fields of one request (431 above)


class ApiError(Exception):
    """An error answered to the client as ``{"error": message, "status": code}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str, close: bool = False) -> JSONResponse:
    """The JSON error answer (``Connection: close`` when the rest of the request will not be read;
    ``Retry-After`` on 503, which is always temporary)."""
    headers = {"Connection": "close"} if close else {}
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers or None)


def _validation_message(exc: ValidationError, prefix: str = "") -> str:
    """Pydantic's first error as one line naming the field."""
    first = exc.errors()[0]
    field = prefix + ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"unknown field {field!r}; valid: {', '.join(GENERATION_NAMES)}"
    return f"field {field!r}: {first['msg']}" if field else first["msg"]


def _base64(value: Any, name: str) -> bytes | None:
    """A base64 field (a ``data:`` URL prefix allowed) as bytes; None when empty."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"field {name!r} must be a base64 string")
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True) or None
    except (binascii.Error, ValueError):
        raise ApiError(400, f"field {name!r} is not valid base64") from None


def _pixels(image: bytes | None) -> int:
    """The pixel count in an image's header (0 when there is no image or no readable header)."""
    if not image:
        return 0
    try:
        with Image.open(io.BytesIO(image)) as header:
            return header.width * header.height
    except Exception:  # noqa: BLE001 - not an image: Predictor.prepare reports it
        return 0


async def _spool_body(request: Request, limit: int) -> IO[bytes]:
    """The request body in a temp file that keeps the first MiB in memory (at most ``limit`` bytes)."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            spool.close()
            raise ApiError(413, f"request body is over the limit of {limit} bytes")
        spool.write(chunk)
    spool.seek(0)
    return spool


class Service:
    """The served model: its predictor, limits and batcher, and the request handling."""

    def __init__(self, predictor: Predictor, limits: ServerLimits | None = None, max_batch: int = 16,
                 max_wait_ms: float = 5.0) -> None:
        self.predictor = predictor
        self.limits = limits or ServerLimits()
        self.batcher = DynamicBatcher(predictor, max_batch, max_wait_ms, self.limits.max_queue)
        self.started = time.time()
        # modalities a fine-tuned model reads besides image and text (e.g. depth): file fields named after them
        self.further = tuple(m for m in predictor.model.modalities if m not in ("image", "text"))
        self.large_inputs = threading.BoundedSemaphore(self.limits.max_decoding)
        # large inputs are read and decoded by these few threads only: the big buffers they free stay
        # in few malloc arenas, instead of one arena per thread of the shared pool (issue #25: RSS)
        self.decoders = ThreadPoolExecutor(self.limits.max_decoding, thread_name_prefix="mmtl-decode")
        self._closed = False

    def info(self) -> dict[str, Any]:
        """/v1/info: the model, the limits and the batching counters."""
        return {
            **self.predictor.info(), "mmtl_version": __version__,
            "limits": dataclasses.asdict(self.limits),
            "batching": {"max_batch": self.batcher.max_batch, "max_wait_ms": self.batcher.max_wait * 1000,
                         "batches_run": self.batcher.batches, "requests_served": self.batcher.requests},
        }

    async def predict(self, request: Request) -> dict[str, Any]:
        """Parse, check and decode one request, then wait for its batch."""
        start = time.perf_counter()
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media == "application/json":
            spool = await _spool_body(request, self.limits.max_body_bytes)
            spool.seek(0, os.SEEK_END)
            large = spool.tell() > LARGE_INPUT_BYTES
            spool.seek(0)
            example, options = await self._off_loop(large, self._prepare_json, spool, large)
        elif media == "multipart/form-data":
            try:
                part_limit = max(4 * self.limits.max_text_chars + 1024, 65536)
                form = await read_form(request, self.limits.max_parts, part_limit)
            except MultiPartException as exc:
                raise ApiError(400, exc.message) from None
            try:
                fields = self._form_fields(form.multi_items())
                large = any(isinstance(v, UploadFile) and (v.size or 0) > LARGE_INPUT_BYTES for v in fields.values())
                example, options = await self._off_loop(large, self._prepare_form, fields, large)
            finally:
                await form.close()
        else:
            raise ApiError(415, f"unsupported Content-Type {media or '(none)'!r}; "
                                "use multipart/form-data or application/json")
        try:
            future = self.batcher.submit(example, options)
        except ServerBusy as exc:
            raise ApiError(503, str(exc)) from None
        try:
            result, batch_size = await asyncio.wait_for(asyncio.wrap_future(future), self.limits.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(503, f"prediction took longer than {self.limits.request_timeout_s:.0f}s") from None
        return {"predictions": result.to_dict(), "batch_size": batch_size,
                "time_ms": round((time.perf_counter() - start) * 1000, 2)}

    def _form_fields(self, items: list[tuple[str, str | UploadFile]]) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for name, value in items:
            if name in fields:
                raise ApiError(400, f"field {name!r} is given twice")
            fields[name] = value
        return fields

    async def _off_loop(self, large: bool, prepare: Any, *args: Any) -> tuple[Example, PredictOptions]:
        """``prepare(*args)`` in a thread: the decoder pool for a large input, the shared pool otherwise."""
        if large:
            return await asyncio.get_running_loop().run_in_executor(self.decoders, functools.partial(prepare, *args))
        return await run_in_threadpool(prepare, *args)

    def _prepare_json(self, spool: IO[bytes], large: bool) -> tuple[Example, PredictOptions]:
        with self._large_input(large):
            return self._prepare_json_body(spool, large)

    def _prepare_json_body(self, spool: IO[bytes], large: bool) -> tuple[Example, PredictOptions]:
        with spool:
            try:
                raw = json.load(spool)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ApiError(400, f"body is not valid JSON: {exc}") from None
            except RecursionError:
                raise ApiError(400, "body is not valid JSON: nested too deeply") from None
        if not isinstance(raw, dict):
            raise ApiError(400, "JSON body must be an object with fields image (base64) and/or text")
        try:
            fields = PredictJSON.model_validate(raw, strict=True)  # JSON has types: true is not 1
        except ValidationError as exc:
            raise ApiError(422, _validation_message(exc)) from None
        files = {name: _base64(value, name) for name, value in {"image": fields.image, **self._extra(fields)}.items()}
        return self._prepare(fields, fields.generation, files, large)

    def _prepare_form(self, form: dict[str, Any], large: bool) -> tuple[Example, PredictOptions]:
        with self._large_input(large):
            return self._prepare_form_fields(form, large)

    def _prepare_form_fields(self, form: dict[str, Any], large: bool) -> tuple[Example, PredictOptions]:
        files: dict[str, bytes | None] = {}
        values: dict[str, Any] = {}
        for name, value in form.items():
            if name in ("image", *self.further):
                data = value.file.read() if isinstance(value, UploadFile) else value.encode()
                files[name] = data or None  # a browser sends an empty file part when no file was chosen
                continue
            if isinstance(value, UploadFile):
                value = value.file.read()
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError:
                    raise ApiError(400, f"field {name!r} is not UTF-8 text") from None
            if value != "" or name == "text":
                values[name] = value
        try:
            fields = PredictForm.model_validate(values)  # form fields are text: "3" is read as 3
        except ValidationError as exc:
            raise ApiError(422, _validation_message(exc)) from None
        self._extra(fields)
        generation = None
        if fields.generation is not None:
            try:
                generation = GenerationOptions.model_validate_json(fields.generation, strict=True)
            except ValidationError as exc:
                raise ApiError(422, _validation_message(exc, "generation.")) from None
        return self._prepare(fields, generation, files, large)

    def _extra(self, fields: PredictJSON | PredictForm) -> dict[str, Any]:
        """The request's further-modality fields; any other unknown field is an error."""
        extra = dict(fields.model_extra or {})
        unknown = sorted(set(extra) - set(self.further))
        if unknown:
            valid = ["image", "text", "tasks", "threshold", "top_k_tags", "generation", *GENERATION_NAMES,
                     *self.further]
            raise ApiError(422, f"unknown field(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
        return extra

    def _large_input(self, large: bool) -> Any:
        """A slot of ``max_decoding`` for a request with a large input; no wait for a small one."""
        return self.large_inputs if large else contextlib.nullcontext()

    def _prepare(self, fields: PredictJSON | PredictForm, generation: GenerationOptions | None,
                 files: dict[str, bytes | None], large: bool) -> tuple[Example, PredictOptions]:
        overrides = generation.model_dump(exclude_none=True) if generation is not None else {}
        top_level = {name: getattr(fields, name) for name in GENERATION_NAMES}
        overrides.update({name: value for name, value in top_level.items() if value is not None})
        options = self.predictor.options(fields.tasks, overrides or None, fields.threshold, fields.top_k_tags)
        if options.eval.generation.num_beams > self.limits.max_beams:
            raise ApiError(400, f"num_beams is {options.eval.generation.num_beams}; this server allows at most "
                                f"{self.limits.max_beams}")
        # a small file can still decode to many pixels: such a request takes a slot now
        with self._large_input(not large and _pixels(files.get("image")) > LARGE_INPUT_PIXELS):
            example = self.predictor.prepare(
                files.get("image"), fields.text, max_pixels=self.limits.max_pixels,
                max_text_chars=self.limits.max_text_chars,
                inputs={m: files[m] for m in self.further if files.get(m) is not None})
        return example, options

    def close(self) -> None:
        """Stop the batcher and the decoder threads (idempotent)."""
        if not self._closed:
            self._closed = True
            self.batcher.close()
            self.decoders.shutdown(wait=False, cancel_futures=True)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in ((400, "a body that cannot be parsed, or bad input"), (408, "the body did not arrive in time"),
                       (411, "no Content-Length"), (413, "a size limit exceeded"), (415, "unsupported Content-Type"),
                       (422, "a field of the wrong type, out of range or unknown"),
                       (431, "too many or too large headers"),
                       (503, "server busy, shutting down or prediction timed out (see Retry-After)"))
}


def _web_file(name: str) -> Response:
    return Response(resources.files("mmtl").joinpath("web", name).read_bytes(), media_type=WEB_FILES[name],
                    headers={"X-Content-Type-Options": "nosniff"})


def create_app(service: Service) -> FastAPI:
    """The FastAPI application serving ``service``: the API, the OpenAPI document and the web page."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(title="mmtl inference API", version=__version__, docs_url=None, redoc_url=None,
                  description="Recognition tags, captions and summaries from a trained mmtl model.", lifespan=lifespan)
    app.state.service = service
    app.add_middleware(RequestLimits, max_body_bytes=service.limits.max_body_bytes,
                       max_header_bytes=service.limits.max_header_bytes, max_headers=service.limits.max_headers)
    app.add_middleware(QuietCancellation)
    _add_error_handlers(app)
    _add_routes(app, service)
    _add_request_schemas(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's, answered as a JSON :class:`ErrorBody` with its status."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        messages = {404: f"no route {path!r}; see /openapi.json",
                    405: f"{request.method} is not allowed on {path}; see /openapi.json"}
        message = messages.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, str(exc.errors()[0].get("msg", "invalid request")))

    @app.exception_handler(ClientDisconnect)
    async def gone(_: Request, exc: ClientDisconnect) -> Response:  # the answer goes nowhere; nothing to log
        return Response(status_code=400)

    @app.exception_handler(InputTooLarge)
    async def too_large(_: Request, exc: InputTooLarge) -> JSONResponse:
        return error_response(413, str(exc))

    @app.exception_handler(MMTLError)
    async def bad_input(_: Request, exc: MMTLError) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(Exception)
    async def bug(_: Request, exc: Exception) -> JSONResponse:  # uvicorn logs the traceback
        return error_response(500, "internal error while predicting (see the server log)")


def _add_routes(app: FastAPI, service: Service) -> None:
    """The API routes over ``service`` and the web page's files."""

    @app.post("/v1/predict", summary="Predict on one image-text pair", response_model=PredictResponse,
              responses=ERROR_RESPONSES, openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"$ref": "#/components/schemas/PredictJSON"}},
                  "multipart/form-data": {"schema": {"$ref": "#/components/schemas/PredictForm"}}}}},
              description="A fine-tuned model's further modalities (GET /v1/info, 'modalities') are file fields "
                          "named after them, like image: e.g. depth (a PNG depth map) or audio (wav/flac).")
    async def predict(request: Request) -> JSONResponse:
        return JSONResponse(await service.predict(request))

    @app.get("/v1/info", summary="Tasks, classes, parameter counts, limits", response_model=Info)
    async def info() -> dict[str, Any]:
        return service.info()

    @app.get("/healthz", summary="Liveness", response_model=Health)
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "uptime_s": round(time.time() - service.started, 1)}

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> Response:
        return _web_file("index.html")

    @app.api_route("/{name}", methods=["GET", "HEAD"], include_in_schema=False)
    async def web_file(name: str) -> Response:
        if name not in WEB_FILES:
            raise StarletteHTTPException(404)
        return _web_file(name)


def _add_request_schemas(app: FastAPI) -> None:
    """Put the request body models (read by hand, as JSON or multipart) into the generated OpenAPI document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for model in (PredictJSON, PredictForm):
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
