"""Stored files over HTTP (`/outputs/{name}`, `/v1/files/{id}/download`): a file in the data dir is sent as it is;
an object in the bucket is streamed through this server (see README "Many machines": the bucket needs no public
endpoint, and the server's URLs and API keys stay the only way in), with single byte ranges for video players."""

from __future__ import annotations

import re
import urllib.parse

from fastapi import Request
from fastapi.responses import FileResponse, Response, StreamingResponse

from vace.server.service.errors import NotFound
from vace.server.storage import Storage

_RANGE = re.compile(r"^bytes=(?P<start>\d*)-(?P<end>\d*)$")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None | bool:
    """The one range `header` asks for as (start, end inclusive); None for the whole object (no header, several
    ranges or one this parser does not read: a server may always answer those with the whole body); False when it
    cannot be satisfied."""
    m = _RANGE.match((header or "").strip())
    if not m or not (m["start"] or m["end"]):
        return None
    if not m["start"]:  # the last N bytes
        suffix = int(m["end"])
        return (max(0, size - suffix), size - 1) if suffix and size else False
    start = int(m["start"])
    end = min(int(m["end"]), size - 1) if m["end"] else size - 1
    return (start, end) if start <= end and start < size else False


def _disposition(filename: str) -> str:
    quoted = urllib.parse.quote(filename)
    return f"attachment; filename*=utf-8''{quoted}" if quoted != filename else f'attachment; filename="{filename}"'


def stored_file_response(storage: Storage, rel: str, media_type: str, request: Request,
                         filename: str | None = None, missing: str = "file not found") -> Response:
    """The object at `rel` as a response (NotFound(missing) when it is not there)."""
    if storage.local_root is not None:
        path = storage.local_root / rel
        if not path.is_file():
            raise NotFound(missing)
        return FileResponse(path, media_type=media_type, filename=filename)
    size = storage.size(rel)
    if size is None:
        raise NotFound(missing)
    headers = {"Accept-Ranges": "bytes"}
    if filename:
        headers["Content-Disposition"] = _disposition(filename)
    wanted = byte_range(request.headers.get("range"), size)
    if wanted is False:
        return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
    start, end = wanted or (0, size - 1)
    headers["Content-Length"] = str(end - start + 1)
    status = 200
    if wanted:
        status, headers["Content-Range"] = 206, f"bytes {start}-{end}/{size}"
    if request.method == "HEAD":  # what a GET would send, without reading the object
        return Response(status_code=status, media_type=media_type, headers=headers)
    body = storage.chunks(rel, start, end - start + 1, size=size)  # size known: no second lookup in a bucket
    return StreamingResponse(body, status_code=status, media_type=media_type, headers=headers)
