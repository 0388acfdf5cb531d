"""The error answers of every operation, written into the OpenAPI document from the error renderers themselves:
each dialect answers errors in its own status codes, content types and bodies, so the document is made by
rendering one sample of each error an operation can meet and describing what came out.

Errors an operation's shape does not show are declared on the route with `responses=declared(404, ...)`; a
route that answers a status with a body of its own declares that status with its `content`, which is kept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vace.server.limits import PayloadTooLarge
from vace.server.service.errors import (
    Gone,
    InvalidInput,
    NotFound,
    QueueFull,
    ServiceError,
    StoreUnavailable,
    Unauthorized,
)

# (path, error) -> (HTTP status, media type, JSON body) as the server would answer it on that path
ErrorSample = Callable[[str, ServiceError], "tuple[int, str, Any]"]
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
DECLARABLE: dict[int, type[ServiceError]] = {e.status: e for e in (Unauthorized, NotFound, Gone)}


def declared(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for errors a route answers that its shape does not show (document_errors renders them)."""
    return {status: {"description": DECLARABLE[status].title} for status in statuses}


def binary_responses(description: str, statuses: tuple[int, ...] = (200, 206)) -> dict[int | str, dict[str, Any]]:
    """`responses=` of a download: any content type (the file's own), ranges included, 416 for a bad range."""
    content = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
    responses: dict[int | str, dict[str, Any]] = {s: {"description": description, "content": content}
                                                  for s in statuses}
    responses[416] = {"description": "The Range header asks for bytes the file does not have"}
    return responses


def _json_type(value: Any) -> str:
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"),
                       (dict, "object")):
        if isinstance(value, kind):
            return name
    return "null"


def body_schema(body: Any) -> dict[str, Any]:
    """A JSON schema every body of this error shape meets: an object with the sample's keys (their values vary
    in type between errors, e.g. a message string or a list of field errors, so only presence is stated)."""
    if isinstance(body, dict):
        return {"type": "object", "required": sorted(body), "properties": {k: {} for k in body}}
    return {"type": _json_type(body)}


def possible_errors(path: str, method: str, operation: dict[str, Any], secured: bool) -> list[ServiceError]:
    """The errors an operation can answer with, from its shape: a key check, path parameters (not found), a
    body (too large, invalid; a JSON create may find the queue full), query parameters (invalid), and a store
    that cannot be written (503)."""
    errors: list[ServiceError] = []
    if secured:
        errors.append(Unauthorized("the API key is not valid"))
    if "{" in path:
        errors.append(NotFound("not found"))
    body = operation.get("requestBody")
    if body is not None:
        errors.append(PayloadTooLarge("body: over the limit", [("body", "over the limit")]))
    if body is not None or operation.get("parameters"):
        errors.append(InvalidInput.of("field", "message"))
    if method == "post" and body is not None and "application/json" in body.get("content", {}):
        errors.append(NotFound("the model it asks for is not served"))
        errors.append(QueueFull("the queue is full", headers={"Retry-After": "5"}))
    if secured:  # the API's routes all use the store
        errors.append(StoreUnavailable("the store cannot be read or written", headers={"Retry-After": "5"}))
    return errors


def document_errors(schema: dict[str, Any], sample: ErrorSample, secured: Callable[[str], bool]) -> None:
    """Add each operation's error responses as `sample` renders them for its path (a status the route documents
    with a body of its own is kept as it is)."""
    for path, item in schema.get("paths", {}).items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for code in [c for c in responses if "HTTPValidationError" in str(responses[c])]:
                del responses[code]  # FastAPI's generic 422 describes a body this server never sends
            errors = possible_errors(path, method, operation, secured(path))
            errors += [DECLARABLE[int(c)](entry["description"]) for c, entry in list(responses.items())
                       if "content" not in entry and int(c) in DECLARABLE]
            by_status: dict[str, dict[str, Any]] = {}
            for error in errors:
                status, media_type, body = sample(path, error)
                if "content" in responses.get(str(status), {}):
                    continue  # the route answers this status with a body of its own
                entry = by_status.setdefault(str(status), {"description": error.title, "content": {}})
                if entry["description"] != error.title:
                    entry["description"] += f" / {error.title}"
                _merge(entry["content"].setdefault(media_type, {"schema": body_schema(body)})["schema"],
                       body_schema(body))
                if error.headers:
                    entry["headers"] = {name: {"schema": {"type": "string"}} for name in error.headers}
            responses.update(by_status)


def _merge(schema: dict[str, Any], other: dict[str, Any]) -> None:
    """Widen `schema` so `other`'s bodies meet it too: keys required by both, properties of either."""
    if schema.get("type") == other.get("type") == "object":
        schema["required"] = sorted(set(schema["required"]) & set(other["required"]))
        schema["properties"] = {**other["properties"], **schema["properties"]}
    elif schema != other:
        schema.clear()  # no common shape: any JSON
