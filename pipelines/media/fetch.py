"""Turn a media reference (local path, http(s) URL, data: URI) into bytes on disk, with limits."""

from __future__ import annotations

import base64
import ipaddress
import os
import socket
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from vace.pipelines.job.request import RequestError

MEDIA_TYPES = ("image/", "video/", "application/octet-stream", "binary/octet-stream")


@dataclass
class FetchPolicy:
    """Limits for user-given URLs. Loopback/private addresses are refused unless their host is allowed."""

    max_bytes: int = 512 * 1024 * 1024
    timeout_s: float = 60.0
    allow_hosts: set[str] = field(default_factory=set)
    allow_private: bool = False
    allow_local_paths: bool = True


def _is_public(host: str, field_name: str) -> bool:
    """Whether every address host resolves to is a public one; RequestError if it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        raise RequestError(field_name, f"URL host {host!r} cannot be resolved") from None
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_global for info in infos)


def check_url(url: str, policy: FetchPolicy, field_name: str) -> None:
    """Refuse URLs that are not http(s) or that point at non-public addresses (unless allowed)."""
    try:
        parsed = urllib.parse.urlparse(url)
        host, _ = parsed.hostname, parsed.port  # .port raises on a malformed or out-of-range port
    except ValueError as exc:
        raise RequestError(field_name, f"malformed URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not host:
        raise RequestError(field_name, f"unsupported URL {url!r}: use http(s), data: or an uploaded file")
    if host in policy.allow_hosts or policy.allow_private:
        return
    if not _is_public(host, field_name):
        raise RequestError(
            field_name, f"URL host {host!r} resolves to a loopback/private address; it is not allowed to fetch it"
        )


def decode_data_uri(uri: str, field_name: str) -> tuple[bytes, str]:
    header, sep, payload = uri.partition(",")
    if not sep:
        raise RequestError(field_name, "malformed data: URI")
    mime = header[5:].split(";")[0] or "application/octet-stream"
    try:
        data = base64.b64decode(payload, validate=False) if ";base64" in header else urllib.parse.unquote_to_bytes(
            payload)
    except ValueError as exc:
        raise RequestError(field_name, f"malformed data: URI ({exc})") from exc
    return data, mime


def _download(url: str, policy: FetchPolicy, field_name: str, dest: Path) -> None:
    import httpx

    try:
        with httpx.stream("GET", url, timeout=policy.timeout_s, follow_redirects=False) as resp:
            if resp.status_code != 200:
                raise RequestError(field_name, f"fetching {url} answered HTTP {resp.status_code}")
            ctype = resp.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
            if not ctype.startswith(MEDIA_TYPES):
                raise RequestError(field_name, f"{url} has content type {ctype!r}, not an image or video")
            declared = int(resp.headers.get("content-length") or 0)
            if declared > policy.max_bytes:
                raise RequestError(field_name, f"{url} is {declared} bytes, over the {policy.max_bytes} limit")
            size = 0
            with open(dest, "wb") as fh:
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > policy.max_bytes:
                        raise RequestError(field_name, f"{url} is over the {policy.max_bytes} byte limit")
                    fh.write(chunk)
    except httpx.HTTPError as exc:
        raise RequestError(field_name, f"could not fetch {url}: {exc}") from exc


def materialize(ref: str, field_name: str, work_dir: Path, policy: FetchPolicy | None = None) -> Path:
    """Return a local file holding the media that `ref` names."""
    policy = policy or FetchPolicy()
    if not isinstance(ref, str) or not ref:
        raise RequestError(field_name, "expected a path, URL or data: URI")
    if ref.startswith("data:"):
        data, _ = decode_data_uri(ref, field_name)
        fd, name = tempfile.mkstemp(dir=work_dir, prefix=f"{field_name}-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return Path(name)
    try:
        scheme = urllib.parse.urlparse(ref).scheme.lower()
    except ValueError as exc:
        raise RequestError(field_name, f"malformed URL {ref!r}: {exc}") from None
    if scheme not in ("", "file") and len(scheme) > 1:  # one letter = a Windows drive, not a scheme
        check_url(ref, policy, field_name)
        fd, name = tempfile.mkstemp(dir=work_dir, prefix=f"{field_name}-")
        os.close(fd)
        _download(ref, policy, field_name, Path(name))
        return Path(name)
    path = Path(ref[7:] if ref.startswith("file://") else ref)
    if not policy.allow_local_paths:
        raise RequestError(field_name, "local paths are not accepted here; upload the file or give a URL")
    if not path.is_file():
        raise RequestError(field_name, f"file not found: {path}")
    return path
