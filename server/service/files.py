"""Uploaded files: bytes under `files/` in the storage (the data dir or the bucket), their records in the store,
expiry by the retention policy."""

from __future__ import annotations

import hashlib
import mimetypes
import os
import re
import time
from collections.abc import Callable
from typing import Any

from vace.server.retention import RetentionPolicy
from vace.server.service.errors import NotFound
from vace.server.service.tenants import EVERYONE, Tenant
from vace.server.storage import Storage, upload_key
from vace.server.store import Store, StoredFile, new_id


def utc(ts: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts or 0))


class FileStorage:
    def __init__(self, store: Store, storage: Storage, retention: RetentionPolicy, clock: Callable[[], float]):
        self.store = store
        self.storage = storage
        self.retention = retention
        self.clock = clock

    def save(self, name: str, content_type: str | None, data: bytes,
             metadata: dict[str, Any] | None = None, tenant: Tenant = EVERYONE) -> StoredFile:
        file_id, now = new_id(), self.clock()
        safe = re.sub(r"[^\w.-]", "_", os.path.basename(name or "file"))[:200] or "file"
        rel = upload_key(file_id, safe)
        self.storage.put_bytes(rel, data)
        ctype = content_type or mimetypes.guess_type(safe)[0] or "application/octet-stream"
        record = StoredFile(id=file_id, name=safe, content_type=ctype, size=len(data),
                            sha256=hashlib.sha256(data).hexdigest(), md5=hashlib.md5(data).hexdigest(),
                            metadata=metadata or {}, created_at=now, expires_at=self.retention.file_expiry(now),
                            path=rel, owner=tenant.owner)
        return self.store.insert_file(record)

    def get(self, file_id: str, tenant: Tenant = EVERYONE) -> StoredFile:
        """A stored upload `tenant` may see; NotFound once it has expired, even before the sweep deletes it."""
        record = self.store.get_file(file_id)
        if record is None or not tenant.sees(record.owner):
            raise NotFound(f"file {file_id!r} not found")
        if record.expired(self.clock()):
            raise NotFound(f"file {file_id!r} not found: it expired at {utc(record.expires_at)}")
        return record

    def ref(self, record: StoredFile) -> str:
        """How a request names the upload (its path in the data dir, or its s3:// URL)."""
        return self.storage.ref(record.path)

    def list(self, tenant: Tenant = EVERYONE) -> list[StoredFile]:
        return self.store.list_files(now=self.clock(), owner=tenant.owner)

    def delete(self, file_id: str, tenant: Tenant = EVERYONE) -> None:
        record = self.get(file_id, tenant)
        self.store.delete_file(file_id)
        self.storage.delete(record.path)
