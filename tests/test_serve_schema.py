"""Schema-driven tests of `mmtl serve`: schemathesis generates requests from the server's own OpenAPI
document and sends them over loopback; no answer may be a 5xx, and every answer must match the
document (status code, content type, body schema). Bounded: a few dozen examples per operation."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from mmtl.cli import main
from mmtl.inference import Predictor
from mmtl.serve import ServerLimits, make_server
from tests.conftest import micro_overrides, serving

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install -e '.[dev]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance, response_schema_conformance, status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def server(micro_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    run = tmp_path_factory.mktemp("schema_run") / "run"
    assert main(["train", *micro_overrides(micro_data, run, steps=1)]) == 0
    limits = ServerLimits(max_body_bytes=100_000, max_pixels=100_000, max_text_chars=2_000)
    with serving(make_server(Predictor.from_pretrained(run), "127.0.0.1", 0, limits, max_wait_ms=1)) as srv:
        yield srv


def test_every_answer_matches_the_openapi_document(server: Any) -> None:
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/predict", "/v1/info", "/healthz"}
    for operation in operations:
        examples = 60 if operation.path == "/v1/predict" else 5

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def answer_matches(case: Any) -> None:
            case.call_and_validate(checks=CHECKS)

        answer_matches()
