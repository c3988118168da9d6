"""Typed request and response models of the HTTP API; the OpenAPI document is generated from them.

The bounds here are the same ones :func:`mmtl.inference.validate_generation` enforces for the CLI
and the Python API, so a request the schema allows never reaches the model with a value it cannot
handle (a 2**70 seed, a temperature that overflows the logits).
"""
from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field

from mmtl.inference import GENERATION_BOUNDS

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


def _bounded(name: str, description: str) -> Any:
    """A generation option's field with the bounds of GENERATION_BOUNDS[name]."""
    low, high, low_open = GENERATION_BOUNDS[name]
    bounds: dict[str, Any] = {"gt" if low_open else "ge": low}
    if high is not None:
        bounds["le"] = high
    return Field(None, description=description, **bounds)


class GenerationOptions(BaseModel):
    """Decoding options of captioning and summarization; unset fields keep the checkpoint's defaults."""

    model_config = _STRICT

    max_length: int | None = _bounded("max_length", "most tokens to generate")
    num_beams: int | None = _bounded("num_beams", "beam size (1: greedy); the server's limit is in /v1/info")
    length_penalty: float | None = _bounded("length_penalty", "beam score length exponent")
    do_sample: bool | None = Field(None, description="sample instead of searching")
    temperature: float | None = _bounded("temperature", "sampling temperature")
    top_k: int | None = _bounded("top_k", "sample from the k most likely tokens (0: all)")
    top_p: float | None = _bounded("top_p", "nucleus sampling mass")
    no_repeat_ngram_size: int | None = _bounded("no_repeat_ngram_size", "forbid repeating n-grams of this size")
    no_immediate_repeat_size: int | None = _bounded("no_immediate_repeat_size",
                                                    "forbid writing a run of up to this many words twice in a row")
    repetition_penalty: float | None = _bounded("repetition_penalty", "penalty on tokens already generated")
    seed: int | None = _bounded("seed", "sampling seed")
    min_length: int | None = _bounded("min_length", "no end of text before this many tokens")
    whole_words: bool | None = Field(None, description="write whole words only (complete a begun document word)")
    repeat_document_ngrams: bool | None = Field(None, description="n-grams may repeat as often as in the document")


GENERATION_NAMES = tuple(GenerationOptions.model_fields)


class _PredictFields(GenerationOptions):
    """Fields shared by the JSON and the multipart request: text, tasks, tagging and decoding options."""

    text: str | None = Field(None, description="paired text (the document to summarize)")
    threshold: float | None = Field(None, ge=0, le=1, description="minimum tag score")
    top_k_tags: int | None = Field(None, ge=0, le=1_000_000, description="keep at most N tags (0: all)")


class PredictJSON(_PredictFields):
    """``application/json`` body: the image (and further modalities) as base64, a ``data:`` URL prefix allowed.

    A fine-tuned model's further modalities (``/v1/info``, ``modalities``) are further base64 fields
    named after them (``depth``, ``audio``)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    image: str | None = Field(None, description="base64 image bytes (PNG, JPEG, WebP, ...)")
    tasks: list[str] | str | None = Field(None, description="task names, a list or comma-separated (default: all)")
    generation: GenerationOptions | None = Field(None, description="decoding options (the same as the top-level ones)")


class PredictForm(_PredictFields):
    """``multipart/form-data`` body: the image (and further modalities) as file parts, the rest as text fields."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    image: bytes | None = Field(None, json_schema_extra={"format": "binary"}, description="image file")
    tasks: str | None = Field(None, description="comma-separated task names (default: all)")
    generation: str | None = Field(None, description="decoding options as a JSON object")


class ScoredLabel(BaseModel):
    """One recognition tag."""

    label: str
    score: float


TaskOutput = Union[list[ScoredLabel], str, int, float, None, list[Any], dict[str, Any]]


class PredictResponse(BaseModel):
    """Predictions of one request."""

    predictions: dict[str, TaskOutput] = Field(
        description="task name -> output: recognition [{label, score}], captioning and summarization strings")
    batch_size: int = Field(description="requests served by the same forward pass")
    time_ms: float = Field(description="time spent in the server on this request")


class ErrorBody(BaseModel):
    """Every error answer of the API."""

    error: str
    status: int


class Health(BaseModel):
    """Liveness answer."""

    status: str
    uptime_s: float


class Batching(BaseModel):
    """Dynamic batching settings and counters (of the worker process that answered)."""

    max_batch: int
    max_wait_ms: float
    batches_run: int
    requests_served: int


class Limits(BaseModel):
    """The server's per-request and connection limits."""

    max_body_bytes: int
    max_pixels: int
    max_text_chars: int
    max_beams: int
    max_queue: int
    request_timeout_s: float
    max_concurrency: int
    max_parts: int
    read_timeout_s: float
    keep_alive_s: float
    max_header_bytes: int
    max_headers: int


class Info(BaseModel):
    """What the served model does, and the server's limits."""

    tasks: dict[str, dict[str, list[str]]]
    classes: list[str]
    modalities: dict[str, dict[str, str]]
    parameters: dict[str, Any]
    step: int | None
    mmtl_version: str | None
    image_size: int
    text_context_length: int
    device: str
    precision: str
    defaults: dict[str, Any]
    limits: Limits
    batching: Batching
