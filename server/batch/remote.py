"""The batch's HTTP client for a running server: its own `vace/<model>` predictions API (Replicate's routes).

POSTs that the server throttles (429) wait for its `Retry-After` and try again; creates carry an
`Idempotency-Key`, so a create repeated after a lost answer (or a crash of the batch) finds the first
prediction instead of rendering twice.
"""

from __future__ import annotations

import hashlib
import mimetypes
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from vace.server.service.predictions import IDEMPOTENCY_HEADER

MAX_BACKOFF_S = 60.0
TRANSPORT_ATTEMPTS = 5
UNAVAILABLE = (502, 503, 504)


class ServerError(Exception):
    """The server refused a request (not throttling): `status` and its message."""

    def __init__(self, status: int, message: str, body: Any = None):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.body = body


class ServerClient:
    """One server, one API key. Safe to share between threads (httpx.Client is)."""

    def __init__(self, base_url: str, api_key: str | None = None, verify: Any = True, timeout: float = 60.0,
                 sleep: Callable[[float], None] = time.sleep, transport: httpx.BaseTransport | None = None):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, verify=verify, timeout=timeout,
                                 transport=transport)
        self.sleep = sleep
        self.throttled = 0  # how many 429 answers were waited out

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send, waiting out 429s (Retry-After, else doubling from 1 s) and retrying transport errors and 502/503/504
        a few times (safe for every call here: a create carries its idempotency key); another 4xx/5xx answer
        raises ServerError."""
        backoff = 1.0
        failures = 0
        while True:
            error: httpx.TransportError | None = None
            try:
                resp = self.http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                error = exc
            if error is not None or resp.status_code in UNAVAILABLE:
                failures += 1
                if failures < TRANSPORT_ATTEMPTS:
                    self.sleep(min(backoff, MAX_BACKOFF_S))
                    backoff *= 2
                    continue
                if error is not None:
                    raise error
            if resp.status_code == 429:
                self.throttled += 1
                self.sleep(min(_retry_after(resp) or backoff, MAX_BACKOFF_S))
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            if resp.status_code >= 400:
                raise ServerError(resp.status_code, _problem_text(resp), _json_or_none(resp))
            return resp

    # ---- the API --------------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """GET /health (503 STARTING is an answer too)."""
        resp = self.http.get("/health")
        return resp.json()

    def input_schema(self, model: str) -> dict[str, dict[str, Any]]:
        """The input properties the server publishes for `vace/<model>`."""
        body = self.request("GET", f"/v1/models/vace/{model}").json()
        return body["latest_version"]["openapi_schema"]["components"]["schemas"]["Input"]["properties"]

    def loras(self) -> dict[str, Any]:
        """GET /v1/loras: the server's LoRA library (which models each one fits) and its turbo distill."""
        return self.request("GET", "/v1/loras").json()

    def upload(self, path: Path) -> str:
        """Upload a local file; its URL on the server works wherever a media URL does."""
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        with open(path, "rb") as fh:
            data = fh.read()
        body = self.request("POST", "/v1/files", files={"content": (path.name, data, ctype)}).json()
        return body["urls"]["get"]

    def create(self, model: str, input: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/models/vace/{model}/predictions", json={"input": input},
                            headers={IDEMPOTENCY_HEADER: idempotency_key}).json()

    def get(self, prediction_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/predictions/{prediction_id}").json()

    def cancel(self, prediction_id: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/predictions/{prediction_id}/cancel").json()

    def download(self, url: str, dest: Path) -> int:
        """Stream an output to `dest` (written beside it, then renamed); returns its size."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".part")
        with self.http.stream("GET", url) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise ServerError(resp.status_code, _problem_text(resp))
            with open(partial, "wb") as fh:
                for chunk in resp.iter_bytes():
                    fh.write(chunk)
        partial.replace(dest)
        return dest.stat().st_size


def idempotency_key(batch_id: str, row_id: str, attempt: int) -> str:
    """Stable for one attempt of one row of one batch: a repeat after a crash finds the same prediction."""
    digest = hashlib.sha256(f"{batch_id}\0{row_id}".encode()).hexdigest()[:24]
    return f"vace-batch-{batch_id}-{digest}-{attempt}"


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return max(0.0, float(resp.headers.get("Retry-After", "")))
    except ValueError:
        return None


def _json_or_none(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def _problem_text(resp: httpx.Response) -> str:
    """The server's own words: RFC 7807 `detail` (with its invalid fields), else the body's text."""
    body = _json_or_none(resp)
    if isinstance(body, dict):
        fields = body.get("invalid_fields") or []
        if fields:
            return "; ".join(f"{f.get('field')}: {f.get('description')}" for f in fields)
        if body.get("detail"):
            return str(body["detail"])
    return resp.text[:500] or resp.reason_phrase
