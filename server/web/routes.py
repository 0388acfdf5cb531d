"""The operator's page (/, and /p/{id} as on replicate.com), its JSON and SSE feed (/web/api), /metrics, offline docs.

The page itself holds no data and needs no key; everything it shows comes from /web/api and the
predictions and files APIs, with the same API key as any client (kept in the browser tab).
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import HTMLResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from vace.pipelines.acceleration.presets import PRESETS
from vace.pipelines.conditioning.tasks import TASKS
from vace.pipelines.job.request import SAMPLERS, GenerationRequest
from vace.server.auth import require_api_key, tenant_of
from vace.server.metrics import EXPOSITION_TYPES
from vace.server.openapi_errors import declared
from vace.server.service.errors import InvalidInput
from vace.server.service.predictions import PredictionService
from vace.server.service.tenants import Tenant
from vace.server.store import QUEUED, TERMINAL, Prediction, Store
from vace.server.web.docs import install_docs
from vace.server.web.summary import summary

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))
STATIC = "/web/static"
HISTORY_PAGE = 20
KEEPALIVE_S = 15.0
MEDIA = (("video", "Source / control video", "video/*"), ("mask", "Mask (video or image)", "video/*,image/*"),
         ("reference_images", "Reference images", "image/*"), ("first_frame", "First frame", "image/*"),
         ("last_frame", "Last frame", "image/*"))


def event(kind: str, data: Any) -> str:
    """One server-sent event with a JSON payload."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _cursor(value: str | None) -> int | None:
    if not value:
        return None
    if not value.isdigit() or len(value) > 18:
        raise InvalidInput.of("cursor", "malformed cursor")
    return int(value)


class WebAPI:
    """What the page reads: the queue in the order workers take it, finished predictions newest first."""

    def __init__(self, service: PredictionService, store: Store):
        self.service = service
        self.store = store

    def active(self, tenant: Tenant) -> list[dict[str, Any]]:
        rows = self.store.active()
        position = {p.id: i for i, p in enumerate(p for p in rows if p.status == QUEUED)}  # in the whole queue
        return [summary(p, self.service, position.get(p.id)) for p in rows if tenant.sees(p.owner)]

    def finished(self, cursor: str | None, tenant: Tenant,
                 limit: int = HISTORY_PAGE) -> tuple[list[dict[str, Any]], str | None]:
        rows = self.store.page(before_seq=_cursor(cursor), limit=limit + 1, statuses=TERMINAL, owner=tenant.owner)
        more = len(rows) > limit
        rows = rows[:limit]
        return [summary(p, self.service) for p in rows], str(rows[-1].seq) if more and rows else None

    def one(self, prediction_id: str, tenant: Tenant, preview: bool = True) -> dict[str, Any]:
        pred = self.service.get(prediction_id, tenant)
        return summary(pred, self.service, self.service.queue_position(pred) if pred.status == QUEUED else None,
                       full=True, preview=preview)

    def snapshot(self, only: str | None, tenant: Tenant) -> dict[str, Any]:
        if only:
            pred = self.one(only, tenant)
            terminal = pred["status"] in TERMINAL
            return {"active": [] if terminal else [pred], "finished": [pred] if terminal else [], "next": None}
        finished, next_cursor = self.finished(None, tenant)
        return {"active": self.active(tenant), "finished": finished, "next": next_cursor}

    async def feed(self, request: Request, only: str | None, tenant: Tenant) -> AsyncIterator[str]:
        """A snapshot, then every change (a preview only when it moved on), with keep-alive comments."""
        with self.service.feed.subscription() as changes:  # subscribed before the snapshot: no change falls between
            snapshot = await asyncio.to_thread(self.snapshot, only, tenant)
            yield event("snapshot", snapshot)
            shown = {p["id"]: (p.get("preview") or {}).get("step") for p in snapshot["active"]}
            while not await request.is_disconnected():
                try:
                    pred: Prediction = await asyncio.wait_for(changes.get(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if (only and pred.id != only) or not tenant.sees(pred.owner):
                    continue
                step = (pred.preview or {}).get("step")
                fresh = step is not None and shown.get(pred.id) != step
                shown[pred.id] = step
                yield event("prediction", summary(pred, self.service, preview=fresh))


def page_csp(public_url: str) -> str:
    """The page talks to this server only; videos and API calls may name it by its public URL."""
    parsed = urllib.parse.urlparse(public_url)
    public = f" {parsed.scheme}://{parsed.netloc}" if parsed.scheme and parsed.netloc else ""
    return (f"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"media-src 'self'{public}; connect-src 'self'{public}; object-src 'none'; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'")


def page_context(app: FastAPI, prediction_id: str | None) -> dict[str, Any]:
    settings = app.state.settings
    return {"title": f"VACE server{' - ' + prediction_id if prediction_id else ''}", "static": STATIC,
            "auth_required": bool(settings.api_keys), "prediction_id": prediction_id,
            "models": list(settings.served_models()), "tasks": list(TASKS), "presets": list(PRESETS),
            "samplers": SAMPLERS, "defaults": GenerationRequest(prompt=""), "media": MEDIA}


def install(app: FastAPI) -> None:
    """The page, its API, /metrics and /docs + /redoc (the app must be made without FastAPI's own docs)."""
    service: PredictionService = app.state.service
    web = WebAPI(service, app.state.store)
    app.mount(STATIC, StaticFiles(directory=str(HERE / "static")), name="web-static")
    install_docs(app)

    headers = {"Content-Security-Policy": page_csp(app.state.settings.public_url or "")}

    @app.get("/", include_in_schema=False)
    def home(request: Request) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(request, "page.html", page_context(app, None), headers=headers)

    @app.get("/p/{prediction_id}", include_in_schema=False)
    def prediction_page(prediction_id: str, request: Request) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(request, "page.html", page_context(app, prediction_id), headers=headers)

    api = APIRouter(prefix="/web/api", tags=["web"], dependencies=[Depends(require_api_key)])

    @api.get("/predictions", summary="Queued and running predictions (all APIs), or finished ones newest first")
    def list_predictions(request: Request, state: str = Query("active", pattern="^(active|finished)$"),
                         cursor: str | None = None) -> dict[str, Any]:
        if state == "active":
            return {"results": web.active(tenant_of(request)), "next": None}
        results, next_cursor = web.finished(cursor, tenant_of(request))
        return {"results": results, "next": next_cursor}

    @api.get("/predictions/{prediction_id}", summary="One prediction as the page shows it, with its rerun input")
    def get_prediction(request: Request, prediction_id: str, preview: bool = True) -> dict[str, Any]:
        return web.one(prediction_id, tenant_of(request), preview)

    @api.get("/events", summary="Server-sent events: a snapshot, then every prediction change (?id=: of one)",
             response_class=StreamingResponse, responses=declared(404))
    def events(request: Request, id: str | None = None) -> StreamingResponse:  # noqa: A002 - the query name
        tenant = tenant_of(request)
        if id:
            service.get(id, tenant)  # 404 before the stream starts
        return StreamingResponse(web.feed(request, id, tenant), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    app.include_router(api)

    @app.get("/metrics", tags=["server"], summary="Prometheus metrics (needs the API key unless --metrics-public)",
             response_class=Response, responses={200: {"description": "The exposition, in the format Accept asks for",
                                                       "content": {t: {"schema": {"type": "string"}}
                                                                   for t in EXPOSITION_TYPES}}, **declared(401)})
    def metrics(request: Request) -> Response:
        if not app.state.settings.metrics_public:
            require_api_key(request)
        body, content_type = app.state.metrics.exposition(request.headers.get("accept", ""))
        return Response(body, media_type=content_type)
