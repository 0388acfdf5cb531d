"""Webhooks: which events a change makes, per-prediction throttling, signing, and delivery with retries.

A dialect registers a formatter under its name; the dispatcher asks it for the message of each event and
delivers the messages of one prediction in order. `start` and `completed` come from the store's webhook outbox,
written in the same transaction as the state change: they are never lost, and their retries (attempt count,
next attempt time) are kept in the database, so a restart resumes them. `output` and `logs` are progress
updates from the change feed, throttled, retried in memory (the `completed` event carries the final state).
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
from vace.server.store import (
    GAVE_UP,
    PENDING,
    PROCESSING,
    QUEUED,
    SENT,
    TERMINAL,
    OutboxEvent,
    Prediction,
    Store,
    new_id,
)

log = logging.getLogger("vace.webhooks")

WEBHOOK_EVENTS = ("start", "output", "logs", "completed", "preview")  # preview: opted in per prediction
DEFAULT_WEBHOOK_EVENTS = ("output", "completed")
THROTTLED_EVENTS = ("output", "logs", "preview")
THROTTLE_S = 0.5
OUTBOX_HOLD_S = 60.0  # a claimed outbox event is this process's to send for this long
RESULTS = {"sent": "delivered", "refused": "refused", "not_sent": "not_sent"}  # -> DeliveryResult outcomes


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
    shown = prev.preview if prev else None
    # A finished prediction's new preview is the `completed` event's to show, unless no preview was seen before
    # (a job that ran between two reads of the change feed): the opted-in client still gets one, as on its stream.
    if cur.preview and cur.preview != shown and (cur.status not in TERMINAL or shown is None):
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
    """Delivers each prediction's events in order: outbox events (start, completed) with persisted retries, feed
    events (output, logs) throttled. Lives on the event loop."""

    def __init__(self, policy: DeliveryPolicy, fetch_policy: FetchPolicy, store: Store, on_result: DeliveryResult):
        self.policy = policy
        self.fetch_policy = fetch_policy
        self.store = store
        self.on_result = on_result
        self.formatters: dict[str, WebhookFormatter] = {}
        self._last_sent: dict[tuple[str, str], float] = {}
        self._pending: dict[str, tuple[list[str], Prediction]] = {}
        self._deliveries: dict[str, asyncio.Queue[tuple[str, Prediction, OutboxEvent | None]]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._held: list[tuple[Prediction, str]] = []  # this tick's feed events, sent after its outbox read
        self._outbox_at: float | None = 0.0  # when the outbox next needs reading (None: nothing pending)
        self._reading = False
        self._inflight: set[int] = set()  # outbox events this process is sending (in-line retries included)
        self._http: Any = None

    async def start(self) -> None:
        self._http = httpx.AsyncClient(follow_redirects=False, timeout=self.policy.timeout_s)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._http:
            await self._http.aclose()

    # ---- the change feed's side --------------------------------------------------------------------------------

    def on_change(self, prev: Prediction | None, pred: Prediction) -> None:
        if pred.webhook:
            wanted = [e for e in webhook_events_between(prev, pred)
                      if e in THROTTLED_EVENTS and e in (pred.webhook_events or ())]
            self.schedule(pred, wanted)

    def on_tick(self, read_db: bool) -> None:
        """After each feed tick: send throttled events that are due, and read the outbox when the feed saw a
        change (a state change may have written it) or a persisted retry falls due. Feed events of the tick wait
        for that read, so each prediction's events go out in order: start, progress, completed."""
        self.flush_throttled()
        held, self._held = self._held, []
        due = self._outbox_at is not None and time.time() >= self._outbox_at
        if (read_db or due) and not self._reading:
            self._reading = True
            task = asyncio.create_task(self._read_outbox(held), name="webhook-outbox")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            for pred, event in held:
                self.enqueue(pred, event)

    async def _read_outbox(self, held: list[tuple[Prediction, str]]) -> None:
        events: list[tuple[OutboxEvent, Prediction]] = []
        try:
            events = await asyncio.to_thread(self._claim_due, frozenset(self._inflight))
            self._inflight.update(outbox.id for outbox, _ in events)
        except Exception:  # noqa: BLE001 - read again at the next change or fallback tick
            log.exception("reading the webhook outbox failed")
            self._outbox_at = time.time() + self.policy.backoff_s
        finally:
            self._reading = False
        events.sort(key=lambda x: x[0].id)
        for outbox, pred in events:
            if outbox.event == "start":
                self.enqueue(as_started(pred), "start", outbox)
        for pred, event in held:
            self.enqueue(pred, event)
        for outbox, pred in events:
            if outbox.event != "start":
                self.enqueue(pred, outbox.event, outbox)

    def _claim_due(self, inflight: frozenset[int]) -> list[tuple[OutboxEvent, Prediction]]:
        """The due outbox events this process claimed (another API process on the database skips them), with
        their predictions; rows for events the prediction did not ask for are closed here. Runs in a thread: it
        reads the ids being sent from `inflight`, a copy, and the caller records the claimed ones."""
        now = time.time()
        claimed = []
        for event in self.store.outbox_due(now):
            if event.id in inflight:
                continue  # between two of its in-line attempts here
            pred = self.store.get(event.prediction_id)
            if pred is None or not pred.webhook or event.event not in (pred.webhook_events or ()):
                self.store.outbox_record(event.id, SENT, event.attempts, event.next_at, "not subscribed")
                continue
            if self.store.outbox_claim(event.id, now, OUTBOX_HOLD_S):
                claimed.append((event, pred))
        self._outbox_at = self.store.outbox_next_at()
        return claimed

    # ---- throttling --------------------------------------------------------------------------------------------

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
            self._held.append((as_started(pred) if event == "start" else pred, event))  # sent by on_tick
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

    # ---- delivery ----------------------------------------------------------------------------------------------

    def enqueue(self, pred: Prediction, event: str, outbox: OutboxEvent | None = None) -> None:
        queue = self._deliveries.get(pred.id)
        if queue is None:
            queue = self._deliveries[pred.id] = asyncio.Queue()
            task = asyncio.create_task(self._deliver_all(pred.id, queue), name=f"webhooks-{pred.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        queue.put_nowait((event, pred, outbox))

    async def _deliver_all(self, prediction_id: str,
                           queue: asyncio.Queue[tuple[str, Prediction, OutboxEvent | None]]) -> None:
        try:
            while not queue.empty():
                event, pred, outbox = queue.get_nowait()
                try:
                    await self._send(prediction_id, event, pred, outbox)
                finally:
                    if outbox is not None:
                        self._inflight.discard(outbox.id)
        finally:
            self._deliveries.pop(prediction_id, None)

    async def _send(self, prediction_id: str, event: str, pred: Prediction, outbox: OutboxEvent | None) -> None:
        formatter = self.formatters.get(pred.dialect)
        message = formatter(pred, event) if formatter else None
        if message is None or not pred.webhook:
            if outbox is not None:
                await asyncio.to_thread(self.store.outbox_record, outbox.id, SENT, outbox.attempts, outbox.next_at,
                                        "nothing to send")
        elif outbox is None:
            await self.deliver(pred.webhook, message, event, prediction_id)
        else:
            await self._deliver_outbox(pred.webhook, message, outbox)

    async def _deliver_outbox(self, url: str, message: WebhookMessage, outbox: OutboxEvent) -> None:
        """Attempts until sent, refused or out of attempts, in order with the prediction's other events; after
        each failure the attempt count and the next attempt's time go to the outbox, so a restart resumes."""
        attempts = outbox.attempts
        while True:
            attempts += 1
            outcome, error = await self.attempt(url, message, outbox.event, outbox.prediction_id)
            if outcome == "retry" and attempts >= self.policy.attempts:
                log.warning("webhook %s for %s gave up after %d attempts", outbox.event, outbox.prediction_id,
                            attempts)
                outcome = "refused"
            state = {"sent": SENT, "refused": GAVE_UP, "retry": PENDING}[outcome]
            wait = self.backoff_s(attempts)
            await asyncio.to_thread(self.store.outbox_record, outbox.id, state, attempts, time.time() + wait, error)
            if state != PENDING:
                self.on_result(RESULTS[outcome], attempts - (outcome == "sent"))
                return
            await asyncio.sleep(wait)
            if not await asyncio.to_thread(self.store.outbox_claim, outbox.id, time.time(), OUTBOX_HOLD_S):
                return  # another API process on the database took the retry

    def backoff_s(self, attempts: int) -> float:
        """The wait after the `attempts`-th failed attempt."""
        return min(30.0, self.policy.backoff_s * 2 ** (attempts - 1))

    async def deliver(self, url: str, message: WebhookMessage, event: str, prediction_id: str) -> bool:
        """Attempts with backoff in memory (progress events); the outcome goes to on_result."""
        for attempt in range(self.policy.attempts):
            if attempt:
                await asyncio.sleep(self.backoff_s(attempt))
            outcome, _ = await self.attempt(url, message, event, prediction_id)
            if outcome != "retry":
                self.on_result(RESULTS[outcome], attempt + (outcome == "refused"))
                return outcome == "sent"
        log.warning("webhook %s for %s gave up after %d attempts", event, prediction_id, self.policy.attempts)
        self.on_result("gave_up", self.policy.attempts)
        return False

    async def attempt(self, url: str, message: WebhookMessage, event: str,
                      prediction_id: str) -> tuple[str, str | None]:
        """One POST: ("sent" | "refused" | "retry", error). The URL is checked and connected to at the checked
        address (no second lookup)."""
        headers = {"content-type": "application/json", "user-agent": "vace-server-webhooks", **message.headers}
        try:
            targets = await asyncio.to_thread(check_url, url, self.fetch_policy, "webhook")
            resp = await self._http.post(targets[0].url, content=message.body, **targets[0].request_kwargs(headers))
        except RequestError as exc:
            log.warning("webhook %s for %s not sent: %s", event, prediction_id, exc)
            return "refused", exc.message
        except httpx.HTTPError as exc:
            log.info("webhook %s for %s failed (%s), will retry", event, prediction_id, exc)
            return "retry", f"{type(exc).__name__}: {exc}"
        if resp.status_code < 300:
            return "sent", None
        if 400 <= resp.status_code < 500 and resp.status_code not in (408, 409, 429):
            log.warning("webhook %s for %s refused with HTTP %s", event, prediction_id, resp.status_code)
            return "refused", f"HTTP {resp.status_code}"
        log.info("webhook %s for %s: HTTP %s, will retry", event, prediction_id, resp.status_code)
        return "retry", f"HTTP {resp.status_code}"
