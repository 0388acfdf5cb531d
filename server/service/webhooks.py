"""Webhooks: which events a change makes, per-prediction throttling, signing, and delivery with retries.

A dialect registers a formatter under its name; the dispatcher asks it for the message of each event and
delivers the messages of one prediction in order, each retried with backoff before the next.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from vace.pipelines.job.request import RequestError
from vace.pipelines.media.fetch import FetchPolicy, check_url
from vace.server.store import PROCESSING, QUEUED, TERMINAL, Prediction, new_id

log = logging.getLogger("vace.webhooks")

WEBHOOK_EVENTS = ("start", "output", "logs", "completed", "preview")  # preview: opted in per prediction
DEFAULT_WEBHOOK_EVENTS = ("output", "completed")
THROTTLED_EVENTS = ("output", "logs", "preview")
THROTTLE_S = 0.5


@dataclass
class WebhookMessage:
    """One HTTP POST a dialect wants delivered: the raw body and its extra headers (signatures)."""

    body: bytes
    headers: dict[str, str]


WebhookFormatter = Callable[[Prediction, str], "WebhookMessage | None"]
DeliveryResult = Callable[[str, int], None]  # (delivered | refused | gave_up | not_sent, failed attempts)


@dataclass
class DeliveryPolicy:
    attempts: int = 6
    backoff_s: float = 0.5
    timeout_s: float = 10.0


def sign_standard_webhook(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks v1 signature: base64 HMAC-SHA256 of `id.timestamp.body`, key = base64 after `whsec_`."""
    key = base64.b64decode(secret.split("_", 1)[1])
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def standard_webhook_headers(secret: str, body: bytes) -> dict[str, str]:
    msg_id = f"msg_{new_id()}"
    ts = int(time.time())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": sign_standard_webhook(secret, msg_id, ts, body)}


def load_secret(data_dir: Path) -> str:
    """The server's signing secret, created once (mode 0600) in the data dir."""
    path = data_dir / "webhook_secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
    return path.read_text().strip()


def webhook_events_between(prev: Prediction | None, cur: Prediction) -> list[str]:
    """Which webhook events the change prev -> cur makes (prev None = the state at creation)."""
    events = []
    prev_status = prev.status if prev else QUEUED
    if cur.started_at is not None and prev_status == QUEUED and cur.status != QUEUED:
        events.append("start")
    if cur.logs != (prev.logs if prev else "") and cur.logs:
        events.append("logs")
    if cur.output is not None and cur.output != (prev.output if prev else None):
        events.append("output")
    if cur.preview and cur.preview != (prev.preview if prev else None) and cur.status not in TERMINAL:
        events.append("preview")
    if cur.status in TERMINAL and prev_status not in TERMINAL:
        events.append("completed")
    return events


def as_started(pred: Prediction) -> Prediction:
    """The prediction as it stood when it started: what a `start` event describes even when the change feed
    first sees the job after it has already moved on (a job shorter than one watch tick)."""
    if pred.status == PROCESSING:
        return pred
    return dataclasses.replace(pred, status=PROCESSING, output=None, error=None, completed_at=None, progress=0.0,
                               metrics=None, logs="")


class WebhookDispatcher:
    """Throttles `output`/`logs` events per prediction and delivers in order. Lives on the event loop."""

    def __init__(self, policy: DeliveryPolicy, fetch_policy: FetchPolicy, on_result: DeliveryResult):
        self.policy = policy
        self.fetch_policy = fetch_policy
        self.on_result = on_result
        self.formatters: dict[str, WebhookFormatter] = {}
        self._last_sent: dict[tuple[str, str], float] = {}
        self._pending: dict[str, tuple[list[str], Prediction]] = {}
        self._deliveries: dict[str, asyncio.Queue[tuple[str, Prediction]]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._http: Any = None

    async def start(self) -> None:
        self._http = httpx.AsyncClient(follow_redirects=False, timeout=self.policy.timeout_s)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._http:
            await self._http.aclose()

    def on_change(self, prev: Prediction | None, pred: Prediction) -> None:
        if pred.webhook:
            wanted = [e for e in webhook_events_between(prev, pred) if e in (pred.webhook_events or ())]
            self.schedule(pred, wanted)

    def schedule(self, pred: Prediction, events: list[str]) -> None:
        now = time.monotonic()
        pending_events, _ = self._pending.pop(pred.id, ([], pred))
        to_send = []
        for event in dict.fromkeys(pending_events + events):
            if event in THROTTLED_EVENTS and not pred.terminal:
                if now - self._last_sent.get((pred.id, event), 0.0) < THROTTLE_S:
                    self._pending.setdefault(pred.id, ([], pred))[0].append(event)
                    continue
            to_send.append(event)
        if pred.id in self._pending:
            self._pending[pred.id] = (self._pending[pred.id][0], pred)
        for event in to_send:
            self._last_sent[(pred.id, event)] = now
            self.enqueue(as_started(pred) if event == "start" else pred, event)
        if pred.terminal:
            for key in [k for k in self._last_sent if k[0] == pred.id]:
                del self._last_sent[key]

    def flush_throttled(self) -> None:
        now = time.monotonic()
        for pid, (events, pred) in list(self._pending.items()):
            ready = [e for e in events if now - self._last_sent.get((pid, e), 0.0) >= THROTTLE_S]
            if ready:
                self._pending.pop(pid)
                self.schedule(pred, [])

    def enqueue(self, pred: Prediction, event: str) -> None:
        queue = self._deliveries.get(pred.id)
        if queue is None:
            queue = self._deliveries[pred.id] = asyncio.Queue()
            task = asyncio.create_task(self._deliver_all(pred.id, queue), name=f"webhooks-{pred.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        queue.put_nowait((event, pred))

    async def _deliver_all(self, prediction_id: str, queue: asyncio.Queue[tuple[str, Prediction]]) -> None:
        try:
            while not queue.empty():
                event, pred = queue.get_nowait()
                formatter = self.formatters.get(pred.dialect)
                message = formatter(pred, event) if formatter else None
                if message is not None and pred.webhook:
                    await self.deliver(pred.webhook, message, event, prediction_id)
        finally:
            self._deliveries.pop(prediction_id, None)

    async def deliver(self, url: str, message: WebhookMessage, event: str, prediction_id: str) -> bool:
        outcome, failed = await self._attempts(url, message, event, prediction_id)
        self.on_result(outcome, failed)
        return outcome == "delivered"

    async def _attempts(self, url: str, message: WebhookMessage, event: str, prediction_id: str) -> tuple[str, int]:
        """POST with retries -> (outcome, attempts that failed)."""
        headers = {"content-type": "application/json", "user-agent": "vace-server-webhooks", **message.headers}
        for attempt in range(self.policy.attempts):
            if attempt:
                await asyncio.sleep(min(30.0, self.policy.backoff_s * 2 ** (attempt - 1)))
            try:
                await asyncio.to_thread(check_url, url, self.fetch_policy, "webhook")
                resp = await self._http.post(url, content=message.body, headers=headers)
                if resp.status_code < 300:
                    return "delivered", attempt
                if 400 <= resp.status_code < 500 and resp.status_code not in (408, 409, 429):
                    log.warning("webhook %s for %s refused with HTTP %s", event, prediction_id, resp.status_code)
                    return "refused", attempt + 1
                log.info("webhook %s for %s: HTTP %s, will retry", event, prediction_id, resp.status_code)
            except RequestError as exc:
                log.warning("webhook %s for %s not sent: %s", event, prediction_id, exc)
                return "not_sent", attempt
            except httpx.HTTPError as exc:
                log.info("webhook %s for %s failed (%s), will retry", event, prediction_id, exc)
        log.warning("webhook %s for %s gave up after %d attempts", event, prediction_id, self.policy.attempts)
        return "gave_up", self.policy.attempts
