"""The FastAPI application: lifecycle (store, worker, change feed), health, outputs, errors, dialects."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import json
import logging
import mimetypes
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from vace.server.api.common import DIALECTS
from vace.server.auth import Access, require_api_key
from vace.server.downloads import stored_file_response
from vace.server.limits import MB, Limits, RequestLimits
from vace.server.metrics import ServerMetrics, WorkerState
from vace.server.openapi_errors import METHODS, binary_responses, document_errors
from vace.server.problems import problem, service_problem
from vace.server.retention import RetentionPolicy
from vace.server.service.errors import InvalidInput, NotFound, ServiceError, StoreUnavailable
from vace.server.service.loras import library_listing
from vace.server.service.predictions import PredictionService, ServiceConfig
from vace.server.service.webhooks import DeliveryPolicy
from vace.server.settings import ServeSettings
from vace.server.storage import output_key
from vace.server.store import PROCESSING, QUEUED, Store, database_url
from vace.server.store_listen import announces
from vace.server.web import routes as web
from vace.server.worker.config import WorkerConfig
from vace.server.worker.executor import make_executor, worker_states
from vace.server.worker.lost import settle_lost
from vace.server.worker.supervisor import DEGRADED, READY, SETUP_FAILED, WorkerSupervisor

log = logging.getLogger("vace.server")

SUPERVISE_INTERVAL_S = 0.5
LEASE_CHECK_S = 10.0  # how often a shared database is searched for jobs whose worker elsewhere stopped heartbeating


def create_app(settings: ServeSettings) -> FastAPI:
    """The app for resolved settings (see serve.resolve): `model` holds NAME=DIR specs."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(database_url(settings.data_dir, settings.database_url))
    storage = settings.storage_backend()
    supervisor = make_executor(store, WorkerConfig(settings=settings, database_url=store.url,
                                                   test_stop_at_step=settings.test_stop_at_step), storage)
    run_worker = not settings.no_worker

    def workers() -> list[WorkerState]:
        return worker_states(supervisor, store.lease_owners()) if run_worker else []

    metrics = ServerMetrics(store.count_active, workers)
    service = PredictionService(store, ServiceConfig(
        data_dir=settings.data_dir, public_url=settings.public_url or "", queue_max=settings.queue_max,
        fetch_policy=settings.fetch_policy(), own_netlocs=settings.own_netlocs(),
        webhooks=DeliveryPolicy(attempts=settings.webhook_attempts),
        retention=RetentionPolicy.from_hours(settings.output_retention_hours, settings.file_retention_hours),
        models=settings.served_models(), loras=settings.lora_config(), helpers=settings.helper_dirs(),
        storage=storage), metrics)
    if run_worker:
        if not announces(store.url):  # else the database's own announcement wakes the workers
            service.on_created = supervisor.wake  # hand-off: the worker claims at once, no fast poll
        service.feed.poke = supervisor.take_changed  # the feed reads when the worker wrote

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if store.single_host:
            settle_lost(store, "interrupted: the server stopped")
        await service.start()
        task = None
        if run_worker:
            supervisor.start()
            task = asyncio.create_task(_supervise(supervisor, store))
        try:
            yield
        finally:
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # The graceful drain: no new jobs; the running one gets --drain-timeout to finish, then is requeued.
            await asyncio.to_thread(supervisor.stop, settings.drain_timeout_s)
            await service.stop()
            store.close()

    # docs_url/redoc_url None: FastAPI's own pages load their scripts from a CDN; server.web serves them offline
    app = FastAPI(title="VACE server", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="VACE video generation with Replicate-compatible (and other) APIs")
    app.state.settings = settings
    app.state.store = store
    app.state.service = service
    app.state.supervisor = supervisor
    app.state.metrics = metrics
    app.state.access = Access(settings.api_keys, settings.admin_keys)
    app.state.safety = settings.safety()  # resolved once: `tiny` writes or finds the tiny checker on disk
    app.state.error_renderers = []  # (path prefix, renderer) pairs a dialect adds for its own error bodies
    app.state.openapi_input_schemas = {}
    _add_error_handlers(app)
    app.add_middleware(RequestLimits, render=functools.partial(render_error, app), limits=Limits(
        max_body_bytes=int(settings.max_body_mb * MB), max_upload_bytes=int(settings.max_upload_mb * MB),
        max_json_depth=settings.max_json_depth))
    _add_core_routes(app)
    for name in DIALECTS:
        importlib.import_module(name).install(app)
    web.install(app)
    _add_openapi(app)
    return app


async def _supervise(supervisor: WorkerSupervisor, store: Store) -> None:
    lease_checked = 0.0

    def once() -> None:  # in a thread, like the change feed's reads: database calls must not stall the loop
        nonlocal lease_checked
        supervisor.poll()
        if not store.single_host and time.monotonic() - lease_checked >= LEASE_CHECK_S:
            lease_checked = time.monotonic()
            settle_lost(store, "the worker running this prediction stopped heartbeating (its lease expired)",
                        expired_before=time.time())

    while True:
        try:
            await asyncio.to_thread(once)
        except Exception:  # noqa: BLE001 - keep supervising
            log.exception("supervision failed")
        await asyncio.sleep(SUPERVISE_INTERVAL_S)


def _add_core_routes(app: FastAPI) -> None:
    settings: ServeSettings = app.state.settings
    run_worker = not settings.no_worker

    @app.get("/health", tags=["server"], summary="READY (200) while a worker can take jobs; otherwise 503 with "
             "the state (STARTING, DEGRADED, SETUP_FAILED) and the reason",
             responses={503: {"description": "No worker can take jobs now; `reason` says why",
                              "content": {"application/json": {"schema": {"type": "object"}}}}})
    @app.get("/health-check", tags=["server"], include_in_schema=False)
    def health() -> JSONResponse:
        supervisor: WorkerSupervisor = app.state.supervisor
        state, reason = READY, None
        if run_worker:
            supervisor.read_reports()
            state, reason = supervisor.health
        body: dict[str, Any] = {"status": state, "models": list(settings.served_models()),
                                "worker": {"enabled": run_worker, "restarts": supervisor.restarts,
                                           "pid": supervisor.pid},
                                # statements sent to the store so far (read before this request's own query)
                                "store_queries": {"api": app.state.store.queries, "worker": supervisor.queries}}
        try:
            counts = app.state.store.count_active()
            body["queue"] = {"queued": counts[QUEUED], "processing": counts[PROCESSING], "max": settings.queue_max}
        except Exception as exc:  # noqa: BLE001 - health must answer, and say why it is not READY
            state, reason = DEGRADED, f"the store cannot be read: {type(exc).__name__}: {exc}"
            body["status"] = state
        if getattr(supervisor, "loaded", None):  # the levers applied: attention backend, compilation, offload
            body["worker"]["loaded"] = supervisor.loaded
        if hasattr(supervisor, "workers"):  # several workers (--gpus / --sequence-parallel)
            body["workers"] = supervisor.workers
        if reason:
            body["reason"] = reason
        if state == SETUP_FAILED:
            body["error"] = supervisor.error
        return JSONResponse(body, status_code=200 if state == READY else 503)

    lora_config = settings.lora_config()
    lora_library = lora_config.library(allow_paths=False)  # one instance: it remembers each file's sha256

    @app.get("/v1/loras", tags=["server"], summary="The LoRA library (--lora-dir) and the turbo distill",
             dependencies=[Depends(require_api_key)])
    def loras() -> dict[str, Any]:
        return library_listing(lora_library, lora_config.distill, settings.served_models())

    @app.head("/outputs/{name}", include_in_schema=False)  # download tools ask for the size first
    @app.get("/outputs/{name}", tags=["server"], summary="A rendered video", response_class=Response,
             responses=binary_responses("The output file (its type from its name)"))
    def output(name: str, request: Request) -> Response:
        missing = f"output {name!r} not found"
        if (key := output_key(name)) is None:
            raise NotFound(missing)
        return stored_file_response(app.state.service.storage, key,
                                    mimetypes.guess_type(name)[0] or "application/octet-stream", request,
                                    missing=missing)


def render_error(app: FastAPI, request: Request, exc: ServiceError) -> Any:
    """`exc` as the response of the dialect that owns the request's path (RFC 7807 elsewhere)."""
    for prefix, renderer in app.state.error_renderers:
        if request.url.path.startswith(prefix):
            return renderer(request, exc)
    return service_problem(exc)


def _add_error_handlers(app: FastAPI) -> None:
    render = functools.partial(render_error, app)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Any:
        return render(request, exc)

    @app.exception_handler(DBAPIError)
    async def store_error(request: Request, exc: DBAPIError) -> Any:
        log.error("store error answering %s %s: %s", request.method, request.url.path, exc.orig)
        return render(request, StoreUnavailable(
            "the store cannot be read or written right now (a full or read-only disk?); nothing was changed, "
            "retry later", headers={"Retry-After": "5"}))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Any:
        errors = []
        for err in exc.errors():
            # A body that is not JSON at all carries the character offset in its loc: it is the body's fault.
            loc = [] if err.get("type") == "json_invalid" else [str(p) for p in err.get("loc", ()) if p != "body"]
            errors.append((".".join(loc) or "body", err.get("msg", "invalid")))
        return render(request, InvalidInput("; ".join(f"{f}: {m}" for f, m in errors), errors))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        if exc.status_code == 400:  # a body FastAPI could not parse (malformed multipart, form data): bad input
            return render(request, InvalidInput.of("body", str(exc.detail)))
        if exc.status_code == 404:  # no such route: said in the dialect that owns the path (a mistyped model id)
            return render(request, NotFound(f"no endpoint at {request.url.path}"))
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # the methods the document lists for the path (Starlette names one route's)
            allowed = allowed_methods(app.openapi(), request.url.path)
            if allowed:
                headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        titles = {404: "Not found", 405: "Method not allowed"}
        return problem(exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail), headers=headers)


def allowed_methods(schema: dict[str, Any], path: str) -> list[str]:
    """The methods the OpenAPI document lists for the paths that `path` matches."""
    methods: set[str] = set()
    for template, item in schema.get("paths", {}).items():
        pattern = "".join("[^/]+" if part.startswith("{") else re.escape(part)
                          for part in re.split(r"(\{[^}]+\})", template))
        if re.fullmatch(pattern, path):
            methods |= {m.upper() for m in item if m in METHODS}
    return sorted(methods)


def _add_openapi(app: FastAPI) -> None:
    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema.setdefault("components", {}).setdefault("schemas", {}).update(app.state.openapi_input_schemas)
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        secured = {route.path for route in app.routes if isinstance(route, APIRoute)
                   and any(d.call is require_api_key for d in route.dependant.dependencies)}
        document_errors(schema, functools.partial(_sample_error, app), lambda path: path in secured)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]



def _sample_error(app: FastAPI, path: str, exc: ServiceError) -> tuple[int, str, Any]:
    """How the server answers `exc` on `path`: status, content type and body (for the OpenAPI document)."""
    response = render_error(app, Request({"type": "http", "method": "GET", "path": path, "headers": [],
                                          "query_string": b""}), exc)
    return response.status_code, response.media_type, json.loads(response.body)
