"""Turn a media reference (local path, http(s) URL, data: URI) into bytes on disk, with limits."""

from __future__ import annotations

import base64
import os
import socket
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from vace.pipelines.job.request import RequestError
from vace.pipelines.media.addresses import parse_address, refusal

MEDIA_TYPES = ("image/", "video/", "application/octet-stream", "binary/octet-stream")


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to for a TCP connection, in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class FetchError(RequestError):
    """An input URL that could not be fetched: no answer, an HTTP error status, or a type or size refused."""


@dataclass
class FetchPolicy:
    """Limits for user-given URLs. Non-global addresses are refused unless their host is allowed.

    `timeout_s` bounds a whole fetch (connect, headers and body together, over every redirect); no single read
    waits longer than `read_timeout_s`, so a host that trickles bytes is cut off at the deadline. Redirects
    (e.g. Hugging Face's `/resolve/` answering with a CDN address) are followed up to `max_redirects` times, each
    new URL checked like the first.
    """

    max_bytes: int = 512 * 1024 * 1024
    timeout_s: float = 60.0
    read_timeout_s: float = 15.0
    allow_hosts: set[str] = field(default_factory=set)
    allow_private: bool = False
    allow_local_paths: bool = True
    max_redirects: int = 5
    resolve: Callable[[str, int], list[str]] = system_resolver

    def timeout(self) -> Any:
        """The httpx timeout of one fetch: each phase bounded by the read timeout and the whole deadline."""
        step = min(self.read_timeout_s, self.timeout_s)
        return httpx.Timeout(step, pool=step)


@dataclass(frozen=True)
class Target:
    """A checked URL pinned to the address that was checked: connect to `url` (the address in place of the
    host name) and send the original host as the Host header and TLS server name, so nothing resolves the
    name a second time (a DNS answer that changes between check and connect cannot reach a private address)."""

    url: str
    headers: dict[str, str]
    extensions: dict[str, Any]

    def request_kwargs(self, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """Keyword arguments for httpx's request/stream calls."""
        return {"headers": {**(headers or {}), **self.headers}, "extensions": dict(self.extensions)}


def _parse(url: str, field_name: str) -> tuple[urllib.parse.SplitResult, str, int]:
    try:
        parsed = urllib.parse.urlsplit(url)
        host, port = parsed.hostname, parsed.port  # .port raises on a malformed or out-of-range port
    except ValueError as exc:
        raise RequestError(field_name, f"malformed URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not host:
        raise RequestError(field_name, f"unsupported URL {url!r}: use http(s), data: or an uploaded file")
    return parsed, host, port or (443 if parsed.scheme == "https" else 80)


def _addresses(host: str, port: int, policy: FetchPolicy, field_name: str) -> list[str]:
    """The addresses to connect to, each one checked (all refused if any is refused)."""
    literal = parse_address(host)
    if literal is not None:
        addresses = [host]
    else:
        try:
            addresses = policy.resolve(host, port)
        except (socket.gaierror, UnicodeError):
            raise RequestError(field_name, f"URL host {host!r} cannot be resolved") from None
        if not addresses:
            raise RequestError(field_name, f"URL host {host!r} cannot be resolved")
    if host in policy.allow_hosts or policy.allow_private:
        return addresses
    for text in addresses:
        address = parse_address(text.split("%")[0])
        why = refusal(address) if address is not None else "not an IP address"
        if "%" in text:
            why = "a scoped (link-local) address"
        if why:
            shown = f"URL host {host!r} resolves to {text}, " if literal is None else f"URL host {host!r} is "
            raise RequestError(field_name, f"{shown}{why}; it is not allowed to fetch it")
    return addresses


def check_url(url: str, policy: FetchPolicy, field_name: str) -> list[Target]:
    """Refuse URLs that are not http(s) or that reach non-global addresses (unless allowed); return one pinned
    Target per checked address, to try in order."""
    parsed, host, port = _parse(url, field_name)
    userinfo = parsed.netloc.rpartition("@")[0]
    host_header = parsed.netloc.rpartition("@")[2]
    targets = []
    for address in _addresses(host, port, policy, field_name):
        shown = f"[{address}]" if ":" in address else address
        netloc = f"{userinfo}@{shown}:{port}" if userinfo else f"{shown}:{port}"
        extensions: dict[str, Any] = {}
        if parsed.scheme == "https" and parse_address(host) is None:
            extensions["sni_hostname"] = host  # the certificate is checked against the name, not the address
        targets.append(Target(urllib.parse.urlunsplit(parsed._replace(netloc=netloc)), {"host": host_header},
                              extensions))
    return targets


def decode_data_uri(uri: str, field_name: str) -> tuple[bytes, str]:
    """(bytes, claimed media type) of a data: URI; RequestError naming `field_name` when it is malformed."""
    header, sep, payload = uri.partition(",")
    if not sep:
        raise RequestError(field_name, "malformed data: URI (no ',' between the header and the data)")
    mime = header[5:].split(";")[0] or "application/octet-stream"
    try:
        if ";base64" in header:
            data = base64.b64decode("".join(payload.split()), validate=True)
        else:
            data = urllib.parse.unquote_to_bytes(payload)
    except ValueError:
        raise RequestError(field_name, "malformed data: URI (the data is not valid base64)") from None
    return data, mime


REDIRECTS = (301, 302, 303, 307, 308)


def _download(url: str, policy: FetchPolicy, field_name: str, dest: Path) -> None:
    """Fetch `url` into dest, following at most `policy.max_redirects` redirects; every hop's URL is checked
    under the policy again (a public URL that redirects to a private address is refused)."""
    deadline = time.monotonic() + policy.timeout_s
    current = url
    try:
        with httpx.Client(timeout=policy.timeout(), follow_redirects=False) as client:
            for _ in range(policy.max_redirects + 1):
                if time.monotonic() > deadline:
                    raise FetchError(field_name, f"fetching {url} took longer than {policy.timeout_s:g} s")
                location = _get(client, current, policy, field_name, dest, deadline)
                if location is None:
                    return
                current = urllib.parse.urljoin(current, location)
    except httpx.TimeoutException:
        raise FetchError(field_name, f"fetching {url} timed out (limit {policy.timeout_s:g} s)") from None
    except httpx.HTTPError as exc:
        raise FetchError(field_name, f"could not fetch {url}: {exc}") from exc
    raise FetchError(field_name, f"fetching {url} was redirected more than {policy.max_redirects} times")


def _get(client: httpx.Client, url: str, policy: FetchPolicy, field_name: str, dest: Path,
         deadline: float) -> str | None:
    """One hop: save the body, or return the Location of a redirect."""
    targets = check_url(url, policy, field_name)
    for i, target in enumerate(targets):
        try:
            with client.stream("GET", target.url, **target.request_kwargs()) as resp:
                location = resp.headers.get("location")
                if resp.status_code in REDIRECTS and location:
                    return location
                _save(resp, url, policy, field_name, dest, deadline)
            return None
        except httpx.ConnectError:
            if i == len(targets) - 1 or time.monotonic() > deadline:
                raise
    return None


def _save(resp: Any, url: str, policy: FetchPolicy, field_name: str, dest: Path, deadline: float) -> None:
    if resp.status_code != 200:
        raise FetchError(field_name, f"fetching {url} answered HTTP {resp.status_code}")
    ctype = resp.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
    if not ctype.startswith(MEDIA_TYPES):
        raise FetchError(field_name, f"{url} has content type {ctype!r}, not an image or video")
    try:
        declared = int(resp.headers.get("content-length") or 0)
    except ValueError:
        declared = 0
    if declared > policy.max_bytes:
        raise FetchError(field_name, f"{url} is {declared} bytes, over the {policy.max_bytes} limit")
    size = 0
    with open(dest, "wb") as fh:
        for chunk in resp.iter_bytes():
            size += len(chunk)
            if size > policy.max_bytes:
                raise FetchError(field_name, f"{url} is over the {policy.max_bytes} byte limit")
            if time.monotonic() > deadline:
                raise FetchError(field_name, f"fetching {url} took longer than {policy.timeout_s:g} s")
            fh.write(chunk)


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
