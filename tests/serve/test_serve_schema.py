"""Schemathesis over the OpenAPI schema, on the real tiny model: requests that fit the schema and requests
that break it, for every operation — no server error (5xx), every status and body as documented."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serve.app import create_app
from serve.service import TwinService
from serve.settings import Settings

CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(serve_settings: Settings, service: TwinService, mode: GenerationMode) -> None:
    # short replies keep ~40 generated requests to seconds on a CPU
    app = create_app(
        serve_settings.model_copy(update={"max_new_tokens": 8, "default_max_tokens": 4}), service
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen: set[str] = set()

    @given(case=schema.as_strategy(mode))
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case) -> None:
        seen.add(f"{case.method} {case.path}")
        case.call_and_validate(checks=CHECKS)

    check()
    assert "POST /v1/chat/completions" in seen
