"""The OpenAPI error responses come from the renderers: status, content type and body shape as answered."""

from __future__ import annotations

import re
from pathlib import Path

from tests.server_process import Server
from tests.system_deps import need_python
from vace.server.openapi_errors import declared, document_errors
from vace.server.service.errors import ServiceError

REQUEST_TIMEOUT_S = 3.0
SLOW_TIMEOUT_S = 20.0  # a case that timed out is tried again with this, unless it may stay open
# What may still be open after the timeout on a server with no worker: fal's synchronous run (it waits for the
# output) and event streams. Anything else that hangs is a failure.
STAYS_OPEN = re.compile(r"^POST /fal-ai/|/stream$")


def sample(path: str, exc: ServiceError) -> tuple[int, str, object]:
    if path.startswith("/ws/"):  # a dialect that answers bad input 400, in an envelope
        return (400 if exc.status == 422 else exc.status), "application/json", {"code": exc.status, "message": "m"}
    return exc.status, "application/problem+json", {"type": "about:blank", "title": exc.title, "status": exc.status,
                                                    "detail": exc.detail}


def test_each_operation_documents_what_its_renderer_answers():
    schema = {"paths": {
        "/v1/predictions/{id}": {"get": {"responses": {"200": {"description": "ok"}, "422": {"description": "x"}},
                                         "parameters": [{"name": "id", "in": "path"}]}},
        "/v1/predictions": {"post": {"responses": {"201": {"description": "created"}},
                                     "requestBody": {"content": {"application/json": {}}}}},
        "/ws/upload": {"post": {"responses": {"200": {"description": "ok"}},
                                "requestBody": {"content": {"multipart/form-data": {}}}}},
        "/health": {"get": {"responses": {"200": {"description": "ok"}}}},
        "/ws/result/{id}": {"put": {"responses": {
            "422": {"description": "FastAPI's", "content": {"application/json": {"schema": {
                "$ref": "#/components/schemas/HTTPValidationError"}}}},
            "404": {"description": "own", "content": {"application/json": {"schema": {"required": ["status"]}}}},
            **{str(code): entry for code, entry in declared(410).items()}}}},
    }}
    document_errors(schema, sample, secured=lambda path: path != "/health")
    get = schema["paths"]["/v1/predictions/{id}"]["get"]["responses"]
    assert sorted(get) == ["200", "401", "404", "422", "503"]
    assert get["404"]["content"]["application/problem+json"]["schema"]["required"] == [
        "detail", "status", "title", "type"]
    create = schema["paths"]["/v1/predictions"]["post"]["responses"]
    assert sorted(create) == ["201", "401", "404", "413", "422", "429", "503"]  # 404: the model is not served
    assert create["429"]["headers"] == {"Retry-After": {"schema": {"type": "string"}}}
    upload = schema["paths"]["/ws/upload"]["post"]["responses"]
    assert sorted(upload) == ["200", "400", "401", "413", "503"]  # bad input is a 400 there; no queue for uploads
    assert upload["400"]["content"]["application/json"]["schema"]["required"] == ["code", "message"]
    assert sorted(schema["paths"]["/health"]["get"]["responses"]) == ["200"]
    result = schema["paths"]["/ws/result/{id}"]["put"]["responses"]
    assert sorted(result) == ["401", "404", "410", "503"]  # no parameters: FastAPI's 422 is gone, not replaced
    assert result["404"]["content"]["application/json"]["schema"] == {"required": ["status"]}  # the route's own
    assert result["410"]["content"]["application/json"]["schema"]["required"] == ["code", "message"]  # rendered


def test_schemathesis_finds_no_server_error_and_nothing_undocumented(tiny_model_dir: Path, tmp_path: Path):
    """A bounded, deterministic schemathesis pass (3 cases per operation, fixed derivation) against a live
    no-worker server on loopback: no 5xx, and every status code, content type and Allow header is one the
    document lists. A request still open after REQUEST_TIMEOUT_S has nothing to check, but only an event stream
    or a sync run (waiting for a worker this server does not have) may stay open."""
    schemathesis = need_python("schemathesis", "schemathesis")
    import requests
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        allow_header_conformance,
        content_type_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, allow_header_conformance]
    server = Server(tmp_path / "data", args=["--model", "tiny", "--no-worker"]).start()
    failures: list[str] = []
    timed_out: set[str] = set()
    try:
        schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
        with requests.Session() as session:
            for result in schema.get_all_operations():
                operation = result.ok()

                @given(case=operation.as_strategy())
                @settings(max_examples=3, derandomize=True, database=None, deadline=None,
                          suppress_health_check=list(HealthCheck))
                def run(case) -> None:
                    try:
                        try:
                            case.call_and_validate(base_url=server.base_url, session=session, checks=checks,
                                                   timeout=REQUEST_TIMEOUT_S)
                        except requests.exceptions.Timeout:  # once more with time to spare: slow is not hung
                            if STAYS_OPEN.search(case.operation.label):
                                raise
                            case.call_and_validate(base_url=server.base_url, session=session, checks=checks,
                                                   timeout=SLOW_TIMEOUT_S)
                    except requests.exceptions.Timeout:
                        timed_out.add(case.operation.label)
                    except Exception as exc:  # noqa: BLE001 - collected, reported together below
                        failures.append(f"{case.operation.label}: {str(exc).strip()[:300]}")

                run()
    finally:
        server.stop()
    assert not failures, "\n".join(sorted(set(failures)))
    assert not {label for label in timed_out if not STAYS_OPEN.search(label)}, sorted(timed_out)
