"""The dialect-free prediction service: create / get / list / cancel, and the parts it is built from.

API dialects (server/api/<dialect>/) translate their JSON into a Job and call this service; they render
`store.Prediction` objects back into their own JSON. Nothing here knows a dialect's wire format: a dialect
registers a webhook formatter under its name (`service.webhooks.formatters`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vace.pipelines.acceleration.presets import resolve_preset
from vace.pipelines.engine.loras import LoraConfig
from vace.pipelines.job.job import Job
from vace.pipelines.job.request import RequestError, with_media
from vace.pipelines.job.requirements import require_helpers
from vace.pipelines.media.fetch import FetchPolicy
from vace.server.metrics import ServerMetrics
from vace.server.retention import RetentionPolicy, SweepReport, sweep
from vace.server.service.cursor import decode_cursor, encode_cursor
from vace.server.service.errors import InvalidInput, NotFound, QueueFull
from vace.server.service.events import ChangeFeed
from vace.server.service.files import FileStorage
from vace.server.service.intake import Intake
from vace.server.service.loras import check_loras
from vace.server.service.tenants import EVERYONE, Tenant
from vace.server.service.urls import MediaUrls
from vace.server.service.webhooks import (
    DEFAULT_WEBHOOK_EVENTS,
    WEBHOOK_EVENTS,
    DeliveryPolicy,
    WebhookDispatcher,
    load_secret,
)
from vace.server.storage import LocalStorage, Storage
from vace.server.store import QUEUED, AdmissionRefused, Prediction, Store, new_id
from vace.weights.catalog import HelperDirs

log = logging.getLogger("vace.predictions")

IDEMPOTENCY_HEADER = "Idempotency-Key"
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


@dataclass
class ServiceConfig:
    data_dir: Path
    public_url: str  # e.g. https://vace.example.com (no trailing slash)
    queue_max: int = 100
    fetch_policy: FetchPolicy = field(default_factory=FetchPolicy)
    own_netlocs: set[str] = field(default_factory=set)  # host:port spellings that reach this server
    webhooks: DeliveryPolicy = field(default_factory=DeliveryPolicy)
    models: dict[str, str] = field(default_factory=dict)  # served name -> weights directory (prompts, LoRAs)
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)  # default: keep everything
    helpers: HelperDirs = field(default_factory=HelperDirs)  # frame interpolators, prompt extenders
    clock: Callable[[], float] = time.time  # wall clock for file expiry and retention (tests inject their own)
    loras: LoraConfig = field(default_factory=LoraConfig)
    storage: Storage | None = None  # where uploads and outputs are kept (None: the data dir)
    change_poll_s: float | None = None  # the change feed's fallback read (None: by database, see service.events)


@dataclass
class Page:
    results: list[Prediction]
    next_cursor: str | None
    previous_cursor: str | None


def scoped_idempotency_key(tenant: str, key: str) -> str:
    """`<tenant>:<key>`: one tenant's key never finds another tenant's prediction. A key is 1-200 visible
    ASCII characters (a UUID, or a batch's row key)."""
    if not _IDEMPOTENCY_KEY.match(key):
        raise InvalidInput.of(IDEMPOTENCY_HEADER, "must be 1 to 200 visible ASCII characters (no spaces)")
    return f"{tenant}:{key}"


class PredictionService:
    """One per server process. Call `start()` inside the event loop and `stop()` on shutdown."""

    def __init__(self, store: Store, config: ServiceConfig, metrics: ServerMetrics | None = None):
        self.store = store
        self.config = config
        self.metrics = metrics or ServerMetrics(store.count_active, list)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        (config.data_dir / "outputs").mkdir(exist_ok=True)
        self.fetch_policy = config.fetch_policy
        self.storage = config.storage or LocalStorage(config.data_dir)
        self.files = FileStorage(store, self.storage, config.retention, config.clock)
        self.urls = MediaUrls(config.public_url, config.own_netlocs, self.files, self.fetch_policy)
        self.webhooks = WebhookDispatcher(config.webhooks, self.fetch_policy, store, self.metrics.webhook_delivered)
        self.webhook_secret = load_secret(config.data_dir)
        self.feed = ChangeFeed(store, self._on_change, self.webhooks.on_tick, config.change_poll_s)
        self.intake = Intake(config.models, self.fetch_policy, self.storage)
        self.on_created: Callable[[], None] = lambda: None  # the app wakes the worker here
        self._retention_task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.webhooks.start()
        self.feed.start()
        self._retention_task = asyncio.create_task(self._retention(), name="retention-sweep")

    async def stop(self) -> None:
        await self.feed.stop()
        if self._retention_task:
            self._retention_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention_task
        await self.webhooks.stop()
        self.intake.close()

    def webhook_secret_for(self, owner: str | None) -> str:
        """The signing secret of a tenant's webhooks (each key has its own)."""
        return Tenant(owner).webhook_secret(self.webhook_secret)

    def _on_change(self, prev: Prediction | None, pred: Prediction) -> None:
        self.webhooks.on_change(prev, pred)
        self.metrics.observe(prev, pred)

    def url(self, path: str) -> str:
        return self.urls.url(path)

    def output_url(self, pred: Prediction) -> str | None:
        """None when there is no output or retention removed it."""
        if pred.data_removed or not pred.output or not pred.output.get("path"):
            return None
        return self.urls.url(pred.output["path"])

    # ---- predictions -------------------------------------------------------------------------------------------

    async def create(self, *, endpoint: str, model: str, job: Job, input: dict[str, Any], dialect: str,
                     version: str = "", webhook: str | None = None, webhook_events: list[str] | None = None,
                     cancel_after_s: float | None = None, extra: dict[str, Any] | None = None,
                     idempotency_key: str | None = None, tenant: Tenant = EVERYONE,
                     previews: bool = False) -> Prediction:
        """Check everything, then enqueue. Raises InvalidInput (field names are GenerationRequest's) or QueueFull;
        nothing is stored unless every check passed. URL lookups and media fetches run on the intake's pool.
        With an idempotency key, a key this tenant used before returns that first prediction (whatever its
        state; nothing new is validated, queued or counted against the queue cap). `previews` opts in to live
        preview events (SSE and the `preview` webhook event)."""
        scoped = scoped_idempotency_key(tenant.owner or "", idempotency_key) if idempotency_key is not None else None
        if scoped is not None:
            first = await asyncio.to_thread(self.store.get_by_idempotency_key, scoped)
            if first is not None:
                return first
        request = await self.intake.run(self._checked_request, job, model, webhook, tenant)
        events = list(DEFAULT_WEBHOOK_EVENTS if webhook_events is None else webhook_events)
        bad = [e for e in events if e not in WEBHOOK_EVENTS]
        if bad:
            raise InvalidInput.of("webhook_events_filter", f"unknown event {bad[0]!r}; use {', '.join(WEBHOOK_EVENTS)}")
        if "preview" in events and not previews:
            raise InvalidInput.of("webhook_events_filter", "the preview event needs previews: true on the prediction")
        now = time.time()
        pred = Prediction(id=new_id(), endpoint=endpoint, version=version, dialect=dialect, model=model,
                          input=input, request=Job(request, job.delivery).to_dict(), status=QUEUED, webhook=webhook,
                          webhook_events=events if webhook else None, created_at=now,
                          cancel_at=now + cancel_after_s if cancel_after_s else None,
                          extra={**(extra or {}), **({"previews": True} if previews else {})},
                          owner=tenant.owner, idempotency_key=scoped)
        try:
            pred, _ = await asyncio.to_thread(self.store.insert_once, pred, self.config.queue_max)
        except AdmissionRefused as exc:
            retry = await asyncio.to_thread(self.retry_after_s)
            raise QueueFull(f"the queue is full ({exc.queued} predictions waiting); retry in {retry} s",
                            headers={"Retry-After": str(retry)}) from None
        self.on_created()
        self.feed.nudge()
        return pred

    def _checked_request(self, job: Job, model: str, webhook: str | None, tenant: Tenant) -> Any:
        """The validated request with its media references resolved, prompts within the text encoder's limit
        and every media input fetched and checked by content; InvalidInput naming the field otherwise."""
        try:
            request = resolve_preset(job.request.validated())
            check_loras(request, model, self.config.models.get(model), self.config.loras, self.config.fetch_policy)
            require_helpers(request, self.config.helpers, self.config.models.get(model))
            self.intake.check_prompts(request, model)
            request = dataclasses.replace(with_media(request, lambda ref, name: self.urls.resolve_media(
                ref, name, tenant)), model=model)
            if webhook:
                self.urls.check_public_url(webhook, "webhook")
            self.intake.check_media(request)
        except RequestError as exc:
            raise InvalidInput.of(exc.field, exc.message) from exc
        return request

    def retry_after_s(self) -> int:
        """Seconds until a queue slot is likely to free, from measured throughput: the mean time between the
        last completions (a slot frees with each). Falls back to 5 s before there is any history."""
        done = self.store.recent_completions(20)
        if len(done) < 2:
            return 5
        return max(1, round((done[0] - done[-1]) / (len(done) - 1)))

    def get(self, prediction_id: str, tenant: Tenant = EVERYONE) -> Prediction:
        """The prediction, if `tenant` may see it (NotFound otherwise: another key's ids do not exist for it)."""
        pred = self.store.get(prediction_id)
        if pred is None or not tenant.sees(pred.owner):
            raise NotFound(f"prediction {prediction_id!r} not found")
        return pred

    def cancel(self, prediction_id: str, tenant: Tenant = EVERYONE) -> Prediction:
        self.get(prediction_id, tenant)
        pred = self.store.request_cancel(prediction_id)
        self.feed.nudge()
        return pred  # type: ignore[return-value]

    def queue_position(self, pred: Prediction) -> int:
        return self.store.queue_position(pred) if pred.status == QUEUED else 0

    def list(self, cursor: str | None = None, limit: int = 100, endpoint_prefix: str | None = None,
             tenant: Tenant = EVERYONE) -> Page:
        """Newest first, only what `tenant` may see; cursors are opaque strings for the next (older) and previous
        (newer) pages."""
        before, after = decode_cursor(cursor) if cursor else (None, None)
        scope = {"endpoint_prefix": endpoint_prefix, "owner": tenant.owner}
        rows = self.store.page(before_seq=before, after_seq=after, limit=limit + 1, **scope)
        # The extra row tells whether there is more in the paging direction; the other direction needs a query.
        if after is not None:
            has_newer, rows = len(rows) > limit, rows[-limit:]
            has_older = bool(rows) and bool(self.store.page(before_seq=rows[-1].seq, limit=1, **scope))
        else:
            has_older, rows = len(rows) > limit, rows[:limit]
            has_newer = before is not None and bool(rows) and bool(self.store.page(
                after_seq=rows[0].seq, limit=1, **scope))
        next_cursor = encode_cursor("b", rows[-1].seq) if has_older else None
        previous_cursor = encode_cursor("a", rows[0].seq) if has_newer else None
        return Page(rows, next_cursor, previous_cursor)

    async def wait(self, prediction_id: str, timeout_s: float) -> Prediction:
        return await self.feed.wait(prediction_id, timeout_s)

    def updates(self, prediction_id: str) -> AsyncIterator[Prediction]:
        return self.feed.updates(prediction_id)

    # ---- retention ---------------------------------------------------------------------------------------------

    def sweep(self, now: float | None = None) -> SweepReport:
        """One bounded retention pass (see server/retention.py)."""
        return sweep(self.store, self.storage, self.config.retention,
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
