"""API-key check shared by every dialect (Authorization: Bearer <key>, or fal's `Key <key>`)."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from vace.server.service.errors import Unauthorized


def require_api_key(request: Request) -> None:
    """FastAPI dependency: pass when no keys are configured or the request carries one of them."""
    keys: list[str] = request.app.state.settings.api_keys
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() in ("bearer", "key", "token") and any(hmac.compare_digest(token, k) for k in keys):
        return
    raise Unauthorized("a valid API key is required: send 'Authorization: Bearer <key>'"
                       if not token else "the API key is not valid")


def tenant(request: Request) -> str:
    """Whose request this is: a fingerprint of the API key it carries ("" on a server without keys). Scopes what
    a client names itself (idempotency keys) so one key's names never reach another's predictions."""
    if not request.app.state.settings.api_keys:
        return ""
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    return hashlib.sha256(token.encode()).hexdigest()[:16]
