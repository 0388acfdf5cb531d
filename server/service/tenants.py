"""Tenants: who owns a prediction or file. Each API key is one (stored as a hash); an admin key, or a server
without keys, sees everything."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass


@dataclass(frozen=True)
class Tenant:
    """Who is asking. `owner` is stored on what they create; None sees every row (an admin key, or a server
    that has no keys)."""

    owner: str | None

    @property
    def admin(self) -> bool:
        return self.owner is None

    def sees(self, owner: str | None) -> bool:
        return self.owner is None or owner == self.owner

    def webhook_secret(self, master: str) -> str:
        """This tenant's webhook signing secret (Standard Webhooks `whsec_...`), derived from the server's: a
        key holder can read and verify with its own secret, never another tenant's."""
        if self.owner is None:
            return master
        key = base64.b64decode(master.split("_", 1)[1])
        return "whsec_" + base64.b64encode(hmac.new(key, self.owner.encode(), hashlib.sha256).digest()).decode()


EVERYONE = Tenant(None)


def key_owner(key: str) -> str:
    """The stored tenant id of a key: a hash, so the database never holds the key itself."""
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:32]
