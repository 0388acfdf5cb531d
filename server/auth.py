"""API keys are tenants: each key sees, lists and cancels only what it created; an admin key sees everything.
Shared by every dialect (Authorization: Bearer <key>, or fal's `Key <key>` / `Token <key>`)."""

from __future__ import annotations

import hmac

from fastapi import Request

from vace.server.service.errors import Unauthorized
from vace.server.service.tenants import EVERYONE, Tenant, key_owner

SCHEMES = ("bearer", "key", "token")


def check_keys(keys: list[str], flag: str) -> None:
    """Refuse at start what would weaken authentication: an empty or whitespace key (an unset $VARIABLE), or a
    key with spaces around it (it could never be sent back as given)."""
    for key in keys:
        if not key.strip():
            raise ValueError(f"{flag}: an empty API key was given (an unset environment variable?); refusing to "
                             "start a server that such a key would open")
        if key != key.strip() or any(c.isspace() for c in key):
            raise ValueError(f"{flag}: API keys may not contain whitespace")


class Access:
    """The configured keys: tenants (`keys`) and administrators (`admin_keys`). No keys at all: one open
    server where every caller is EVERYONE."""

    def __init__(self, keys: list[str], admin_keys: list[str] | None = None):
        check_keys(keys, "--api-key")
        check_keys(admin_keys or [], "--admin-key")
        self._tenants = {key: Tenant(key_owner(key)) for key in keys}
        self._tenants.update({key: EVERYONE for key in admin_keys or []})

    @property
    def open(self) -> bool:
        return not self._tenants

    def tenant(self, authorization: str) -> Tenant:
        """The tenant an Authorization header names; Unauthorized when it names none."""
        if self.open:
            return EVERYONE
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() in SCHEMES and token:
            found = None
            for key, tenant in self._tenants.items():  # every key compared: which one matched is not timed
                if hmac.compare_digest(token.encode(), key.encode()):
                    found = tenant
            if found is not None:
                return found
        raise Unauthorized("a valid API key is required: send 'Authorization: Bearer <key>'"
                           if not token else "the API key is not valid")


def require_api_key(request: Request) -> Tenant:
    """FastAPI dependency: the caller's tenant (kept on request.state.tenant for the routes)."""
    tenant = request.app.state.access.tenant(request.headers.get("authorization", ""))
    request.state.tenant = tenant
    return tenant


def tenant_of(request: Request) -> Tenant:
    """The tenant require_api_key found for this request."""
    return request.state.tenant
