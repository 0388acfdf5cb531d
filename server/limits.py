"""Request limits checked before any route runs: body size, and for JSON bodies nesting depth and text that
cannot be stored (lone surrogates, NUL, NaN/Infinity). A refusal is rendered like any other ServiceError, so
each dialect answers in its own error format, and nothing is stored."""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from vace.server.service.errors import InvalidInput, ServiceError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Renderer = Callable[[Request, ServiceError], Response]

MB = 1024 * 1024


class PayloadTooLarge(ServiceError):
    status, title = 413, "Payload too large"


@dataclass(frozen=True)
class Limits:
    """`max_body_bytes` bounds a JSON (or any non-upload) body; `max_upload_bytes` a multipart upload body
    (the file plus a little form overhead); `max_json_depth` the nesting of arrays and objects."""

    max_body_bytes: int = 64 * MB
    max_upload_bytes: int = 512 * MB
    max_json_depth: int = 32

    def body_limit(self, content_type: str) -> tuple[int, str]:
        """(byte limit, the setting that raises it) for a body of `content_type`."""
        if content_type.startswith("multipart/"):
            return self.max_upload_bytes + MB, "--max-upload-mb"
        return self.max_body_bytes, "--max-body-mb"


def is_json(content_type: str) -> bool:
    """Bodies FastAPI and the dialects parse as JSON: no content type, application/json, application/*+json."""
    media = content_type.split(";")[0].strip().lower()
    return not media or media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_json(body: bytes, max_depth: int) -> None:
    """InvalidInput naming the field when a JSON body nests deeper than `max_depth` or holds a string (key or
    value) that cannot be stored as UTF-8 text (a lone surrogate such as "\\ud800", or NUL), or NaN/Infinity.
    A body that is not JSON at all is left to the route's own parser and error."""
    try:
        value = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidInput.of("body", f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as exc:
        if "is not a JSON number" in str(exc):
            raise InvalidInput.of("body", f"{str(exc).split(':')[0]}: use a finite number") from None
        return
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth >= max_depth:
                raise InvalidInput.of(path or "body", f"JSON nested deeper than {max_depth} levels")
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                if isinstance(key, str):
                    shown = key.encode("utf-8", "backslashreplace").decode("utf-8")  # the path is echoed back
                    child_path = f"{path}.{shown}" if path else shown
                    _check_text(key, child_path, "key")
                else:
                    child_path = f"{path}[{key}]"
                stack.append((child, child_path, depth + 1))
        elif isinstance(item, str):
            _check_text(item, path or "body", "value")
        elif isinstance(item, float) and not math.isfinite(item):  # 1e999 parses as inf
            raise InvalidInput.of(path or "body", "must be a finite number")


def _check_text(text: str, path: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput.of(path, f"the {what} holds a lone UTF-16 surrogate (e.g. \\ud800), which is not "
                                    "text; send valid Unicode") from None
    if "\x00" in text:
        raise InvalidInput.of(path, f"the {what} holds a NUL character (\\u0000), which cannot be stored")


class RequestLimits:
    """ASGI middleware enforcing `Limits` on HTTP request bodies; `render` turns a refusal into the dialect's
    error response for the request's path."""

    def __init__(self, app: ASGIApp, limits: Limits, render: Renderer):
        self.app = app
        self.limits = limits
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        content_type = headers.get("content-type", "")
        limit, setting = self.limits.body_limit(content_type)
        too_large = PayloadTooLarge(f"body: the request body is over the {limit // MB} MB limit ({setting})",
                                    [("body", f"over the {limit // MB} MB limit ({setting})")])
        try:
            declared = int(headers.get("content-length", "0"))
        except ValueError:
            declared = 0
        if declared > limit:
            await self._refuse(scope, too_large, send)
            return
        if is_json(content_type) and scope.get("method") in ("POST", "PUT", "PATCH"):
            await self._json(scope, receive, send, limit, too_large)
            return
        await self._streamed(scope, receive, send, limit, too_large)

    async def _json(self, scope: Scope, receive: Receive, send: Send, limit: int, too_large: ServiceError) -> None:
        """Buffer the body (at most `limit` bytes), check it, then hand it on unchanged."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await self._refuse(scope, too_large, send)
                return
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            check_json(body, self.limits.max_json_depth)
        except ServiceError as exc:
            await self._refuse(scope, exc, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for the disconnect like the server would
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _streamed(self, scope: Scope, receive: Receive, send: Send, limit: int,
                        too_large: ServiceError) -> None:
        """Pass the body through as it comes; past `limit` bytes the route sees a disconnect and the client a
        413 (unless the route already answered)."""
        size, over, started = 0, False, False

        async def counted() -> Message:
            nonlocal size, over
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if over:
                return  # the route's answer to a cut-off body is replaced by the 413
            started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._refuse(scope, too_large, send)

    async def _refuse(self, scope: Scope, exc: ServiceError, send: Send) -> None:
        response = self.render(Request(scope), exc)
        await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}
