"""The Replicate predictions API (under /v1 and /replicate/v1, and both without /v1). Thin: JSON <-> the service."""

from __future__ import annotations

import asyncio
import functools
import json
import re
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Header, Request, Response, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from vace.pipelines.job.job import Job
from vace.server.api.common import preflight
from vace.server.api.replicate.schema import ReplicateModel, catalog
from vace.server.auth import require_api_key, tenant_of
from vace.server.downloads import stored_file_response
from vace.server.openapi_errors import binary_responses
from vace.server.service.errors import InvalidInput, NotFound
from vace.server.service.predictions import IDEMPOTENCY_HEADER, PredictionService
from vace.server.service.webhooks import WebhookMessage, standard_webhook_headers
from vace.server.settings import ServeSettings
from vace.server.store import PROCESSING, QUEUED, Prediction, StoredFile

DIALECT = "replicate"
# replicate 1.x joins "/v1/..." onto its base URL; 2.x and the JavaScript client join "/..." onto theirs (their
# defaults end in /v1). Every route is served under /v1 and again without it, so the bare host and host/v1 both
# work as the base URL of every client; the aliases without /v1 stay out of the OpenAPI document.
PREFIXES = ("", "/replicate")
VERSIONS = ("/v1", "")
MAX_WAIT_S = 60
_STATUS = {QUEUED: "starting", PROCESSING: "processing"}
# Replicate's predict_time, the seed used, and what the job held: gpu_seconds (= seconds x gpus), the model's experts
IDEMPOTENCY = Header(None, alias=IDEMPOTENCY_HEADER, description=(
    "this server's own header: a create repeated with a key the same API key used before returns the first "
    "prediction instead of creating another"))
REPLICATE_METRICS = ("predict_time", "seed", "gpu_seconds", "gpus", "experts")
_HASH = re.compile(r"^[0-9a-f]{64}$")
_DURATION = re.compile(r"^(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+(?:\.\d+)?)s?)?$")


class PredictionCreate(BaseModel):
    """Body of a create request (`version` only on POST /v1/predictions)."""

    input: dict[str, Any] = Field(default_factory=dict, description="the model's input, see its openapi_schema")
    version: str | None = Field(None, description="owner/name, owner/name:<64 hex> or a bare 64-hex version id")
    webhook: str | None = None
    webhook_events_filter: list[str] | None = None
    stream: bool | None = None
    previews: bool = Field(False, description=(
        "this server's extension: send `preview` events (a small JPEG data: URI of the video so far, every few "
        "denoising steps) on the prediction's stream, and as webhooks when webhook_events_filter lists `preview`"))


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def base_url(request: Request, service: PredictionService) -> str:
    prefix = "/replicate" if request.url.path.startswith("/replicate/") else ""
    return service.url(prefix).rstrip("/")


def prediction_json(pred: Prediction, service: PredictionService, base: str, waiting: bool = False) -> dict:
    """A store Prediction as Replicate's prediction object."""
    status = _STATUS.get(pred.status, pred.status)
    if waiting and not pred.terminal:
        status = "starting"  # replicate.run() polls only when a Prefer: wait answer says `starting`
    metrics: dict[str, Any] = {}
    if pred.terminal:
        metrics = {k: v for k, v in (pred.metrics or {}).items() if k in REPLICATE_METRICS}
        if pred.completed_at:
            metrics["total_time"] = round(pred.completed_at - pred.created_at, 3)
    get = f"{base}/v1/predictions/{pred.id}"
    return {
        "id": pred.id, "model": pred.endpoint, "version": pred.version, "input": pred.input,
        "logs": pred.logs, "output": service.output_url(pred), "data_removed": pred.data_removed, "error": pred.error,
        "status": status, "created_at": iso(pred.created_at), "started_at": iso(pred.started_at),
        "completed_at": iso(pred.completed_at), "metrics": metrics,
        "urls": {"get": get, "cancel": f"{get}/cancel", "stream": f"{get}/stream",
                 "web": service.url(f"/p/{pred.id}")},
    }


def file_json(record: StoredFile, base: str) -> dict:
    return {
        "id": record.id, "name": record.name, "content_type": record.content_type, "size": record.size,
        "etag": record.md5, "checksums": {"sha256": record.sha256, "md5": record.md5},
        "metadata": record.metadata, "created_at": iso(record.created_at), "expires_at": iso(record.expires_at),
        "urls": {"get": f"{base}/v1/files/{record.id}"},
    }


def webhook_message(pred: Prediction, event: str, service: PredictionService) -> WebhookMessage:
    payload = prediction_json(pred, service, service.url("").rstrip("/"))
    if event == "preview":
        payload["preview"] = pred.preview
    body = json.dumps(payload).encode()
    return WebhookMessage(body, standard_webhook_headers(service.webhook_secret_for(pred.owner), body))


def parse_prefer_wait(prefer: str | None) -> int | None:
    """`Prefer: wait` -> 60, `wait=N` -> N (1..60); None when the header asks for no wait."""
    for part in re.split(r"[,;]", prefer or ""):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "wait":
            if not value.strip():
                return MAX_WAIT_S
            try:
                return max(1, min(MAX_WAIT_S, int(value.strip())))
            except ValueError as exc:
                raise InvalidInput.of("Prefer", f"wait must be a whole number of seconds, got {value!r}") from exc
    return None


def parse_duration(text: str) -> float:
    """`30s`, `5m`, `1h30m` (or bare seconds) -> seconds."""
    m = _DURATION.match(text.strip())
    if not text.strip() or not m:
        raise InvalidInput.of("Cancel-After", f"expected a duration such as 30s, 5m or 1h30m, got {text!r}")
    return int(m["h"] or 0) * 3600 + int(m["m"] or 0) * 60 + float(m["s"] or 0)


class ReplicateAPI:
    """Routes bound to the service and the model catalog of one server."""

    def __init__(self, service: PredictionService, settings: ServeSettings):
        self.service = service
        self.settings = settings
        self.models = catalog(list(settings.served_models()))

    def model(self, owner: str, name: str) -> ReplicateModel:
        model = self.models.get(f"{owner}/{name}")
        if model is None:
            raise NotFound(f"model {owner}/{name} not found; this server has {', '.join(self.models)}")
        return model

    def by_version(self, ref: str) -> tuple[ReplicateModel, str]:
        owner_name, _, version = ref.partition(":")
        if _HASH.match(ref):
            owner_name, version = "", ref
        if owner_name:
            owner, _, name = owner_name.partition("/")
            model = self.model(owner, name)
            if version and version not in model.versions:
                raise NotFound(f"version {version} of {model.ref} not found")
            return model, version or model.versions[0]
        for model in self.models.values():
            if version in model.versions:
                return model, version
        raise NotFound(f"version {ref!r} not found")

    async def create(self, request: Request, model: ReplicateModel, version: str, body: PredictionCreate,
                     prefer: str | None, cancel_after: str | None, idempotency_key: str | None) -> Response:
        wait_s = parse_prefer_wait(prefer)
        cancel_s = parse_duration(cancel_after) if cancel_after else None
        if cancel_s is not None and cancel_s < 5:
            raise InvalidInput.of("Cancel-After", "must be at least 5s")
        try:
            gen = model.to_request(body.input, self.settings.turbo_map())
            preflight(gen, self.settings, model.served, None, InvalidInput.of)
            pred = await self.service.create(
                endpoint=model.ref, model=model.served, job=Job(gen), input=body.input,
                dialect=DIALECT, version=version, webhook=body.webhook, webhook_events=body.webhook_events_filter,
                cancel_after_s=cancel_s, idempotency_key=idempotency_key, tenant=tenant_of(request),
                previews=body.previews)
        except InvalidInput as exc:
            raise InvalidInput(exc.detail, [(model.field_name(f), m) for f, m in exc.errors]) from exc
        headers = {}
        if wait_s:
            pred = await self.service.wait(pred.id, wait_s)
            headers["Preference-Applied"] = f"wait={wait_s}"
        base = base_url(request, self.service)
        return JSONResponse(prediction_json(pred, self.service, base, waiting=bool(wait_s)), status_code=201,
                            headers=headers)

    def router(self) -> APIRouter:
        r = APIRouter(dependencies=[Depends(require_api_key)], tags=["replicate"])
        svc = self.service

        @r.post("/models/{owner}/{name}/predictions", status_code=201, summary="Create a prediction (model)")
        async def create_by_model(owner: str, name: str, body: PredictionCreate, request: Request,
                                  prefer: str | None = Header(None),
                                  cancel_after: str | None = Header(None, alias="Cancel-After"),
                                  idempotency_key: str | None = IDEMPOTENCY) -> Response:
            model = self.model(owner, name)
            return await self.create(request, model, model.versions[0], body, prefer, cancel_after, idempotency_key)

        @r.post("/predictions", status_code=201, summary="Create a prediction (version)")
        async def create_by_version(body: PredictionCreate, request: Request, prefer: str | None = Header(None),
                                    cancel_after: str | None = Header(None, alias="Cancel-After"),
                                    idempotency_key: str | None = IDEMPOTENCY) -> Response:
            if not body.version:
                raise InvalidInput.of("version", "is required")
            model, version = self.by_version(body.version)
            return await self.create(request, model, version, body, prefer, cancel_after, idempotency_key)

        @r.get("/predictions", summary="List predictions, newest first")
        def list_predictions(request: Request, cursor: str | None = None) -> dict:
            page = svc.list(cursor, tenant=tenant_of(request))
            base = base_url(request, svc)

            def link(c: str | None) -> str | None:
                return f"{base}/v1/predictions?cursor={c}" if c else None

            return {"next": link(page.next_cursor), "previous": link(page.previous_cursor),
                    "results": [prediction_json(p, svc, base) for p in page.results]}

        @r.get("/predictions/{prediction_id}", summary="Get a prediction")
        def get_prediction(prediction_id: str, request: Request) -> dict:
            return prediction_json(svc.get(prediction_id, tenant_of(request)), svc, base_url(request, svc))

        @r.post("/predictions/{prediction_id}/cancel", summary="Cancel a prediction")
        def cancel_prediction(prediction_id: str, request: Request) -> dict:
            return prediction_json(svc.cancel(prediction_id, tenant_of(request)), svc, base_url(request, svc))

        @r.get("/predictions/{prediction_id}/stream", summary="Server-sent events of a prediction",
               response_class=StreamingResponse)
        def stream_prediction(prediction_id: str, request: Request) -> StreamingResponse:
            svc.get(prediction_id, tenant_of(request))
            return StreamingResponse(self.events(prediction_id, request), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-store"})

        @r.get("/models", summary="List models")
        def list_models(request: Request) -> dict:
            return {"next": None, "previous": None,
                    "results": [self.model_json(m, request) for m in self.models.values()]}

        @r.get("/models/{owner}/{name}", summary="Get a model")
        def get_model(owner: str, name: str, request: Request) -> dict:
            return self.model_json(self.model(owner, name), request)

        @r.get("/models/{owner}/{name}/versions", summary="List a model's versions")
        def list_versions(owner: str, name: str) -> dict:
            model = self.model(owner, name)
            return {"next": None, "previous": None, "results": [model.version_json(v) for v in model.versions]}

        @r.get("/models/{owner}/{name}/versions/{version_id}", summary="Get a model version")
        def get_version(owner: str, name: str, version_id: str) -> dict:
            model = self.model(owner, name)
            if version_id not in model.versions:
                raise NotFound(f"version {version_id} of {model.ref} not found")
            return model.version_json(version_id)

        @r.post("/files", status_code=201, summary="Upload a file to use as an input")
        async def upload_file(request: Request, content: UploadFile = File(...),
                              metadata: UploadFile | str | None = Form(None)) -> dict:
            if metadata is not None and not isinstance(metadata, str):  # the JavaScript client: a JSON file part
                metadata = (await metadata.read()).decode("utf-8", errors="replace")
            try:
                meta = json.loads(metadata) if metadata else {}
            except json.JSONDecodeError as exc:
                raise InvalidInput.of("metadata", f"must be JSON: {exc}") from exc
            data = await content.read()
            record = await asyncio.to_thread(svc.files.save, content.filename or "file", content.content_type, data,
                                             meta, tenant_of(request))  # a bucket's PUT must not stall the loop
            return file_json(record, base_url(request, svc))

        @r.get("/files", summary="List uploaded files")
        def list_files(request: Request) -> dict:
            base = base_url(request, svc)
            return {"next": None, "previous": None,
                    "results": [file_json(f, base) for f in svc.files.list(tenant_of(request))]}

        @r.get("/files/{file_id}", summary="Get an uploaded file's metadata")
        def get_file(file_id: str, request: Request) -> dict:
            return file_json(svc.files.get(file_id, tenant_of(request)), base_url(request, svc))

        @r.head("/files/{file_id}/download", include_in_schema=False)
        @r.get("/files/{file_id}/download", summary="Download an uploaded file", response_class=Response,
               responses=binary_responses("The file as uploaded (its own content type)"))
        def download_file(file_id: str, request: Request) -> Response:
            record = svc.files.get(file_id, tenant_of(request))
            return stored_file_response(svc.storage, record.path, record.content_type, request, filename=record.name,
                                        missing=f"file {file_id!r} not found: its bytes are gone")

        @r.delete("/files/{file_id}", status_code=204, summary="Delete an uploaded file")
        def delete_file(file_id: str, request: Request) -> Response:
            svc.files.delete(file_id, tenant_of(request))
            return Response(status_code=204)

        @r.get("/webhooks/default/secret", summary="The key webhooks are signed with")
        def webhook_secret(request: Request) -> dict:
            return {"key": svc.webhook_secret_for(tenant_of(request).owner)}

        return r

    def model_json(self, model: ReplicateModel, request: Request) -> dict:
        return {
            "url": f"{base_url(request, self.service)}/v1/models/{model.ref}", "owner": model.owner,
            "name": model.name, "description": model.description, "visibility": "public",
            "github_url": None, "paper_url": "https://arxiv.org/abs/2503.07598", "license_url": None,
            "run_count": 0, "cover_image_url": None, "default_example": None,
            "latest_version": model.version_json(),
        }

    async def events(self, prediction_id: str, request: Request):
        """SSE: `output`, `logs`, `error`, `done` (and `preview`, JSON, when the prediction opted in); every event
        carries an id (the client drops those without)."""
        counter = 0
        sent_logs = 0
        sent_output = None
        sent_preview = None

        def event(kind: str, data: str) -> str:
            nonlocal counter
            counter += 1
            lines = "".join(f"data: {line}\n" for line in (data.split("\n") or [""]))
            return f"event: {kind}\nid: {counter}\n{lines}\n"

        async for pred in self.service.updates(prediction_id):
            if await request.is_disconnected():
                return
            if len(pred.logs) > sent_logs:
                yield event("logs", pred.logs[sent_logs:].rstrip("\n"))
                sent_logs = len(pred.logs)
            if pred.extra.get("previews") and pred.preview and pred.preview != sent_preview:
                yield event("preview", json.dumps(pred.preview))
                sent_preview = pred.preview
            url = self.service.output_url(pred)
            if url and url != sent_output:
                yield event("output", url)
                sent_output = url
            if pred.terminal:
                if pred.status == "failed":
                    yield event("error", pred.error or "failed")
                yield event("done", json.dumps({"reason": "canceled"} if pred.status == "canceled" else {}))
                return


def install(app: FastAPI) -> None:
    service: PredictionService = app.state.service
    api = ReplicateAPI(service, app.state.settings)
    router = api.router()
    for prefix in PREFIXES:
        for version in VERSIONS:
            app.include_router(router, prefix=prefix + version, include_in_schema=bool(version),
                               generate_unique_id_function=lambda route, p=prefix: f"replicate{p.replace('/', '_')}_"
                                                                                    f"{route.name}")
    service.webhooks.formatters[DIALECT] = functools.partial(webhook_message, service=service)
    app.state.openapi_input_schemas.update(
        {f"ReplicateInput_{m.owner}_{m.name}".replace("-", "_").replace(".", "_"):
         {"type": "object", "required": ["prompt"], "properties": m.schema} for m in api.models.values()})
