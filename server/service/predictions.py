"""The dialect-free prediction service: create / get / list / cancel, waiting, change feeds, webhooks, files.

API dialects (server/api/*.py) translate their JSON into a GenerationRequest and call this module; they
render `store.Prediction` objects back into their own JSON. Nothing here knows a dialect's wire format:
a dialect registers a webhook formatter under its name and the service calls it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import mimetypes
import os
import re
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vace.pipelines.job.request import GenerationRequest, RequestError
from vace.pipelines.media.fetch import FetchPolicy, check_url
from vace.server.retention import RetentionPolicy, SweepReport, sweep
from vace.server.store import PROCESSING, QUEUED, TERMINAL, Prediction, Store, StoredFile, new_id

log = logging.getLogger("vace.predictions")

MEDIA_FIELDS = ("video", "mask", "first_frame", "last_frame")
WEBHOOK_EVENTS = ("start", "output", "logs", "completed")
DEFAULT_WEBHOOK_EVENTS = ("output", "completed")
THROTTLED_EVENTS = ("output", "logs")
THROTTLE_S = 0.5
WATCH_INTERVAL_S = 0.15
_FILE_PATH = re.compile(r"^(?:/[\w.-]+)*/v1/files/(?P<id>[a-z0-9]+)(?:/download)?$")
_OUTPUT_PATH = re.compile(r"^/outputs/(?P<name>[\w.-]+)$")


class ServiceError(Exception):
    """An error a dialect turns into its own error body. `errors` lists (field, message) for bad input."""

    status = 400
    title = "Bad request"

    def __init__(self, detail: str, errors: list[tuple[str, str]] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.headers = headers or {}


class NotFound(ServiceError):
    status, title = 404, "Not found"


class InvalidInput(ServiceError):
    status, title = 422, "Invalid input"

    @classmethod
    def of(cls, field_name: str, message: str) -> InvalidInput:
        return cls(f"{field_name}: {message}", [(field_name, message)])


class QueueFull(ServiceError):
    status, title = 429, "Too many requests"


class Unauthorized(ServiceError):
    status, title = 401, "Unauthenticated"


@dataclass
class ServiceConfig:
    data_dir: Path
    public_url: str  # e.g. https://vace.example.com (no trailing slash)
    queue_max: int = 100
    allow_hosts: set[str] = field(default_factory=set)
    own_netlocs: set[str] = field(default_factory=set)  # host:port spellings that reach this server
    webhook_attempts: int = 6
    webhook_backoff_s: float = 0.5
    webhook_timeout_s: float = 10.0
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)  # default: keep everything
    clock: Callable[[], float] = time.time  # wall clock for file expiry and retention (tests inject their own)


@dataclass
class Page:
    results: list[Prediction]
    next_cursor: str | None
    previous_cursor: str | None


@dataclass
class WebhookMessage:
    """One HTTP POST a dialect wants delivered: the raw body and its extra headers (signatures)."""

    body: bytes
    headers: dict[str, str]


WebhookFormatter = Callable[[Prediction, str, "PredictionService"], "WebhookMessage | None"]


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


class PredictionService:
    """One per server process. Call `start()` inside the event loop and `stop()` on shutdown."""

    def __init__(self, store: Store, config: ServiceConfig):
        self.store = store
        self.config = config
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        (self.config.data_dir / "files").mkdir(exist_ok=True)
        (self.config.data_dir / "outputs").mkdir(exist_ok=True)
        self.fetch_policy = FetchPolicy.from_env()
        self.fetch_policy.allow_hosts |= set(config.allow_hosts)
        self.webhook_formatters: dict[str, WebhookFormatter] = {}
        self.webhook_secret = self._load_secret()
        self._listeners: dict[str, set[asyncio.Queue[Prediction]]] = {}
        self._seen: dict[str, Prediction] = {}
        self._last_sent: dict[tuple[str, str], float] = {}
        self._pending: dict[str, tuple[list[str], Prediction]] = {}
        self._deliveries: dict[str, asyncio.Queue[tuple[str, Prediction]]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._watch_task: asyncio.Task | None = None
        self._retention_task: asyncio.Task | None = None
        self._http: Any = None

    # ---- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        import httpx

        self._http = httpx.AsyncClient(follow_redirects=False, timeout=self.config.webhook_timeout_s)
        recent = self.store.changed_since(time.time() - 10.0)  # baseline: no events for changes already made
        for pred in recent + [p for p in self.store.page(limit=1000) if not p.terminal]:
            self._seen[pred.id] = pred
        self._watch_task = asyncio.create_task(self._watch(), name="prediction-watch")
        self._retention_task = asyncio.create_task(self._retention(), name="retention-sweep")

    async def stop(self) -> None:
        for task in (self._watch_task, self._retention_task):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for task in list(self._tasks):
            task.cancel()
        if self._http:
            await self._http.aclose()

    def _load_secret(self) -> str:
        path = self.config.data_dir / "webhook_secret"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
        return path.read_text().strip()

    # ---- URLs --------------------------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """Absolute URL on this server's public base URL."""
        return self.config.public_url.rstrip("/") + "/" + path.lstrip("/")

    def output_url(self, pred: Prediction) -> str | None:
        """None when there is no output or retention removed it."""
        if pred.data_removed or not pred.output or not pred.output.get("path"):
            return None
        return self.url(pred.output["path"])

    def output_path(self, name: str) -> Path | None:
        path = self.config.data_dir / "outputs" / name
        return path if "/" not in name and path.is_file() else None

    def _local_ref(self, parsed: urllib.parse.ParseResult, field_name: str) -> str | None:
        """A URL of this server's own upload or output -> the file's local path (None if not ours)."""
        if m := _FILE_PATH.match(parsed.path):
            record = self.store.get_file(m["id"])
            if record and record.expired(self.config.clock()):
                raise InvalidInput.of(field_name, f"uploaded file {record.id} expired at {_utc(record.expires_at)} "
                                                  "(--file-retention-hours); upload it again")
            return str(self.config.data_dir / record.path) if record else None
        if m := _OUTPUT_PATH.match(parsed.path):
            path = self.output_path(m["name"])
            return str(path) if path else None
        return None

    def resolve_media(self, ref: str, field_name: str) -> str:
        """Accept data: URIs, this server's file/output URLs and public http(s) URLs; refuse local paths."""
        if not isinstance(ref, str) or not ref:
            raise InvalidInput.of(field_name, "expected a URL, a data: URI or an uploaded file")
        if ref.startswith("data:"):
            return ref
        if ref.startswith(("http://", "https://")):
            parsed = _parse_url(ref, field_name)
            if parsed.netloc in self.config.own_netlocs:
                local = self._local_ref(parsed, field_name)
                if local:
                    return local
                raise InvalidInput.of(field_name, f"{ref} is not a file on this server")
            self._check_public_url(ref, field_name)
            return ref
        raise InvalidInput.of(field_name, "expected an http(s) URL, a data: URI or an uploaded file URL")

    def _check_public_url(self, url: str, field_name: str) -> None:
        _parse_url(url, field_name)  # check_url lets urllib's ValueError (e.g. "http://[::1") through
        try:
            check_url(url, self.fetch_policy, field_name)
        except RequestError as exc:
            raise InvalidInput.of(field_name, exc.message) from exc

    # ---- predictions -------------------------------------------------------------------------------------------

    def create(self, *, endpoint: str, model: str, request: GenerationRequest, input: dict[str, Any],
               dialect: str, version: str = "", webhook: str | None = None,
               webhook_events: list[str] | None = None, cancel_after_s: float | None = None,
               extra: dict[str, Any] | None = None) -> Prediction:
        """Validate and enqueue. Raises InvalidInput (field names are GenerationRequest's) or QueueFull."""
        try:
            request = request.validated()
        except RequestError as exc:
            raise InvalidInput.of(exc.field, exc.message) from exc
        media = {name: self.resolve_media(getattr(request, name), name)
                 for name in MEDIA_FIELDS if getattr(request, name)}
        refs = [self.resolve_media(r, f"reference_images[{i}]") for i, r in enumerate(request.reference_images)]
        request = dataclasses.replace(request, reference_images=refs, model=model, **media)
        if webhook:
            self._check_public_url(webhook, "webhook")
        events = list(DEFAULT_WEBHOOK_EVENTS if webhook_events is None else webhook_events)
        bad = [e for e in events if e not in WEBHOOK_EVENTS]
        if bad:
            raise InvalidInput.of("webhook_events_filter", f"unknown event {bad[0]!r}; use {', '.join(WEBHOOK_EVENTS)}")
        queued = self.store.count_active()[QUEUED]
        if queued >= self.config.queue_max:
            retry = self.retry_after_s()
            raise QueueFull(f"the queue is full ({queued} predictions waiting); retry in {retry} s",
                            headers={"Retry-After": str(retry)})
        now = time.time()
        pred = Prediction(id=new_id(), endpoint=endpoint, version=version, dialect=dialect, model=model,
                          input=input, request=request.to_dict(), status=QUEUED, webhook=webhook,
                          webhook_events=events if webhook else None, created_at=now,
                          cancel_at=now + cancel_after_s if cancel_after_s else None, extra=extra or {})
        return self.store.insert(pred)

    def retry_after_s(self) -> int:
        """A rough wait until a queue slot frees: the mean run time of recent predictions."""
        times = [p.metrics.get("predict_time") for p in self.store.page(limit=20)
                 if p.metrics and p.metrics.get("predict_time")]
        return max(1, round(sum(times) / len(times))) if times else 5

    def get(self, prediction_id: str) -> Prediction:
        pred = self.store.get(prediction_id)
        if pred is None:
            raise NotFound(f"prediction {prediction_id!r} not found")
        return pred

    def cancel(self, prediction_id: str) -> Prediction:
        self.get(prediction_id)
        return self.store.request_cancel(prediction_id)  # type: ignore[return-value]

    def queue_position(self, pred: Prediction) -> int:
        return self.store.queue_position(pred) if pred.status == QUEUED else 0

    def list(self, cursor: str | None = None, limit: int = 100, endpoint_prefix: str | None = None) -> Page:
        """Newest first; cursors are opaque strings for the next (older) and previous (newer) pages."""
        before = after = None
        if cursor:
            try:
                kind, _, value = base64.urlsafe_b64decode(cursor.encode() + b"==").decode().partition(":")
                if kind not in ("a", "b"):
                    raise ValueError(kind)
                seq = int(value)
                if abs(seq) >= 2**63:  # not a database integer: the query would raise (HTTP 500)
                    raise ValueError(value)
                before, after = (seq, None) if kind == "b" else (None, seq)
            except ValueError as exc:
                raise InvalidInput.of("cursor", "malformed cursor") from exc
        rows = self.store.page(before_seq=before, after_seq=after, limit=limit + 1, endpoint_prefix=endpoint_prefix)
        # The extra row tells whether there is more in the paging direction; the other direction needs a query.
        if after is not None:
            has_newer, rows = len(rows) > limit, rows[-limit:]
            has_older = bool(rows) and bool(self.store.page(before_seq=rows[-1].seq, limit=1,
                                                            endpoint_prefix=endpoint_prefix))
        else:
            has_older, rows = len(rows) > limit, rows[:limit]
            has_newer = before is not None and bool(rows) and bool(self.store.page(
                after_seq=rows[0].seq, limit=1, endpoint_prefix=endpoint_prefix))
        next_cursor = _cursor("b", rows[-1].seq) if has_older else None
        previous_cursor = _cursor("a", rows[0].seq) if has_newer else None
        return Page(rows, next_cursor, previous_cursor)

    async def wait(self, prediction_id: str, timeout_s: float) -> Prediction:
        """The prediction once terminal, or as it is when timeout_s has passed."""
        pred = self.get(prediction_id)
        if pred.terminal or timeout_s <= 0:
            return pred
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(timeout_s) if hasattr(asyncio, "timeout") else _timeout(timeout_s):
                async for pred in self.updates(prediction_id):
                    if pred.terminal:
                        return pred
        return self.get(prediction_id)

    async def updates(self, prediction_id: str) -> AsyncIterator[Prediction]:
        """The current state, then every change, ending after a terminal state."""
        queue: asyncio.Queue[Prediction] = asyncio.Queue()
        self._listeners.setdefault(prediction_id, set()).add(queue)
        try:
            pred = self.get(prediction_id)
            yield pred
            while not pred.terminal:
                try:
                    pred = await asyncio.wait_for(queue.get(), timeout=5.0)
                except asyncio.TimeoutError:
                    pred = self.get(prediction_id)  # belt and braces against a missed change
                yield pred
        finally:
            listeners = self._listeners.get(prediction_id)
            if listeners is not None:
                listeners.discard(queue)
                if not listeners:
                    self._listeners.pop(prediction_id, None)

    # ---- the change feed ---------------------------------------------------------------------------------------

    def _read_feed(self, since: float, now: float) -> list[Prediction]:
        """The database side of one watch tick: Cancel-After deadlines, then the rows changed since `since`
        (re-reading one more second: a write stamped just before `now` may commit after this read, and workers
        stamp updated_at with their own clocks). That window overlaps the next ticks', so only (id, rev) is read
        first and a whole row (its input may hold megabytes of data: URIs) only at a revision not yet seen.
        Safe in a thread: only _watch, which awaits this, changes _seen."""
        for due in self.store.due_for_cancel(now):
            self.store.request_cancel(due, reason="canceled: Cancel-After deadline reached")
        seen = self._seen
        return self.store.get_many([pid for pid, rev in self.store.changed_revs(since - 1.0)
                                    if pid not in seen or seen[pid].rev < rev])

    async def _watch(self) -> None:
        since = time.time() - 1.0
        while True:
            try:
                now = time.time()
                # In a thread: a database waiting on a lock (or a network round trip) must not stall every request.
                changed = await asyncio.to_thread(self._read_feed, since, now)
                since = now
                for pred in changed:
                    self._on_change(pred)
                for pid in [p.id for p in self._seen.values() if p.terminal and p.updated_at < now - 10.0]:
                    del self._seen[pid]  # past the re-read window: no more changes can arrive
                self._flush_throttled()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the feed must survive a transient database error
                log.exception("prediction watch failed")
            await asyncio.sleep(WATCH_INTERVAL_S)

    def _on_change(self, pred: Prediction) -> None:
        prev = self._seen.get(pred.id)
        if prev is not None and prev.rev >= pred.rev:
            return
        if prev is None and pred.rev == 0:
            self._seen[pred.id] = pred
            return
        self._seen[pred.id] = pred
        for queue in self._listeners.get(pred.id, ()):
            queue.put_nowait(pred)
        if pred.webhook:
            wanted = [e for e in webhook_events_between(prev, pred) if e in (pred.webhook_events or ())]
            self._schedule_webhooks(pred, wanted)

    def _schedule_webhooks(self, pred: Prediction, events: list[str]) -> None:
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
            self._enqueue_webhook(as_started(pred) if event == "start" else pred, event)
        if pred.terminal:
            for key in [k for k in self._last_sent if k[0] == pred.id]:
                del self._last_sent[key]

    def _flush_throttled(self) -> None:
        now = time.monotonic()
        for pid, (events, pred) in list(self._pending.items()):
            ready = [e for e in events if now - self._last_sent.get((pid, e), 0.0) >= THROTTLE_S]
            if ready:
                self._pending.pop(pid)
                self._schedule_webhooks(pred, [])

    def _enqueue_webhook(self, pred: Prediction, event: str) -> None:
        queue = self._deliveries.get(pred.id)
        if queue is None:
            queue = self._deliveries[pred.id] = asyncio.Queue()
            task = asyncio.create_task(self._deliver_all(pred.id, queue), name=f"webhooks-{pred.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        queue.put_nowait((event, pred))

    async def _deliver_all(self, prediction_id: str, queue: asyncio.Queue[tuple[str, Prediction]]) -> None:
        """Deliver one prediction's webhooks in order; each is retried with backoff before the next."""
        try:
            while not queue.empty():
                event, pred = queue.get_nowait()
                formatter = self.webhook_formatters.get(pred.dialect)
                message = formatter(pred, event, self) if formatter else None
                if message is not None and pred.webhook:
                    await self._deliver(pred.webhook, message, event, prediction_id)
        finally:
            self._deliveries.pop(prediction_id, None)

    async def _deliver(self, url: str, message: WebhookMessage, event: str, prediction_id: str) -> bool:
        import httpx

        headers = {"content-type": "application/json", "user-agent": "vace-server-webhooks", **message.headers}
        for attempt in range(self.config.webhook_attempts):
            if attempt:
                await asyncio.sleep(min(30.0, self.config.webhook_backoff_s * 2 ** (attempt - 1)))
            try:
                await asyncio.to_thread(check_url, url, self.fetch_policy, "webhook")
                resp = await self._http.post(url, content=message.body, headers=headers)
                if resp.status_code < 300:
                    return True
                if 400 <= resp.status_code < 500 and resp.status_code not in (408, 409, 429):
                    log.warning("webhook %s for %s refused with HTTP %s", event, prediction_id, resp.status_code)
                    return False
                log.info("webhook %s for %s: HTTP %s, will retry", event, prediction_id, resp.status_code)
            except RequestError as exc:
                log.warning("webhook %s for %s not sent: %s", event, prediction_id, exc)
                return False
            except httpx.HTTPError as exc:
                log.info("webhook %s for %s failed (%s), will retry", event, prediction_id, exc)
        log.warning("webhook %s for %s gave up after %d attempts", event, prediction_id,
                    self.config.webhook_attempts)
        return False

    # ---- files -------------------------------------------------------------------------------------------------

    def save_file(self, name: str, content_type: str | None, data: bytes,
                  metadata: dict[str, Any] | None = None) -> StoredFile:
        file_id, now = new_id(), self.config.clock()
        safe = re.sub(r"[^\w.-]", "_", os.path.basename(name or "file"))[:200] or "file"
        rel = f"files/{file_id}-{safe}"
        (self.config.data_dir / rel).write_bytes(data)
        ctype = content_type or mimetypes.guess_type(safe)[0] or "application/octet-stream"
        record = StoredFile(id=file_id, name=safe, content_type=ctype, size=len(data),
                            sha256=hashlib.sha256(data).hexdigest(), md5=hashlib.md5(data).hexdigest(),
                            metadata=metadata or {}, created_at=now, expires_at=self.config.retention.file_expiry(now),
                            path=rel)
        return self.store.insert_file(record)

    def get_file(self, file_id: str) -> StoredFile:
        """A stored upload; NotFound once it has expired, even before the sweep deletes it."""
        record = self.store.get_file(file_id)
        if record is None:
            raise NotFound(f"file {file_id!r} not found")
        if record.expired(self.config.clock()):
            raise NotFound(f"file {file_id!r} not found: it expired at {_utc(record.expires_at)}")
        return record

    def file_path(self, record: StoredFile) -> Path:
        return self.config.data_dir / record.path

    def list_files(self) -> list[StoredFile]:
        return self.store.list_files(now=self.config.clock())

    # ---- retention ---------------------------------------------------------------------------------------------

    def sweep(self, now: float | None = None) -> SweepReport:
        """One bounded retention pass (see server/retention.py)."""
        return sweep(self.store, self.config.data_dir, self.config.retention,
                     self.config.clock() if now is None else now)

    async def _retention(self) -> None:
        while True:
            full = False
            try:
                full = (await asyncio.to_thread(self.sweep)).full
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - retention must survive a transient database or disk error
                log.exception("retention sweep failed")
            await asyncio.sleep(0.0 if full else self.config.retention.interval_s)

    def delete_file(self, file_id: str) -> None:
        record = self.get_file(file_id)
        self.store.delete_file(file_id)
        self.file_path(record).unlink(missing_ok=True)


def _parse_url(url: str, field_name: str) -> urllib.parse.ParseResult:
    try:
        parsed = urllib.parse.urlparse(url)
        parsed.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise InvalidInput.of(field_name, f"malformed URL {url!r} ({exc})") from exc
    return parsed


def _utc(ts: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts or 0))


def _cursor(kind: str, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{seq}".encode()).decode().rstrip("=")


@contextlib.asynccontextmanager
async def _timeout(seconds: float) -> AsyncIterator[None]:
    """asyncio.timeout for Python 3.10."""
    task = asyncio.current_task()
    handle = asyncio.get_running_loop().call_later(seconds, task.cancel)  # type: ignore[union-attr]
    try:
        yield
    except asyncio.CancelledError as exc:
        raise asyncio.TimeoutError from exc
    finally:
        handle.cancel()

