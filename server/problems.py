"""RFC 7807 problem responses (the default error body; a dialect may register its own for its paths)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from vace.server.service.errors import ServiceError


def problem(status: int, title: str, detail: str, invalid_fields: list[dict[str, str]] | None = None,
            headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if invalid_fields is not None:
        body["invalid_fields"] = invalid_fields
    return JSONResponse(body, status_code=status, headers=headers, media_type="application/problem+json")


def service_problem(exc: ServiceError, field_name: Any = None) -> JSONResponse:
    """ServiceError -> RFC 7807; `field_name` maps internal field names to the client's."""
    rename = field_name or (lambda f: f)
    fields = None
    if exc.status == 422:
        fields = [{"type": "invalid", "field": rename(f), "description": m} for f, m in exc.errors]
        detail = "; ".join(f"{rename(f)}: {m}" for f, m in exc.errors) or exc.detail
    else:
        detail = exc.detail
    return problem(exc.status, exc.title, detail, fields, exc.headers)
