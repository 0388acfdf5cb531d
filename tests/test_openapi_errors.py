"""The OpenAPI error responses come from the renderers: status, content type and body shape as answered."""

from __future__ import annotations

from vace.server.openapi_errors import document_errors
from vace.server.service.errors import ServiceError


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
    }}
    document_errors(schema, sample, secured=lambda path: path != "/health")
    get = schema["paths"]["/v1/predictions/{id}"]["get"]["responses"]
    assert sorted(get) == ["200", "401", "404", "422", "503"]
    assert get["404"]["content"]["application/problem+json"]["schema"]["required"] == [
        "detail", "status", "title", "type"]
    create = schema["paths"]["/v1/predictions"]["post"]["responses"]
    assert sorted(create) == ["201", "401", "413", "422", "429", "503"]
    assert create["429"]["headers"] == {"Retry-After": {"schema": {"type": "string"}}}
    upload = schema["paths"]["/ws/upload"]["post"]["responses"]
    assert sorted(upload) == ["200", "400", "401", "413", "503"]  # bad input is a 400 there; no queue for uploads
    assert upload["400"]["content"]["application/json"]["schema"]["required"] == ["code", "message"]
    assert sorted(schema["paths"]["/health"]["get"]["responses"]) == ["200"]
