"""WaveSpeed's v3 API for wavespeed-ai/wan-2.1-14b-vace: submit, poll, sync mode, media upload, v3 webhooks.

Every answer is the `{code, message, data}` envelope; errors carry a non-200 code and HTTP status.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import time
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, File, Request, UploadFile
from fastapi.responses import JSONResponse

from vace.pipelines.job.job import Job
from vace.pipelines.outputs import safety
from vace.server.api.common import preflight
from vace.server.api.models import pick_model
from vace.server.api.wavespeed import schema as ws
from vace.server.api.wavespeed.schema import WaveSpeedInputError
from vace.server.auth import require_api_key, tenant_of
from vace.server.openapi_errors import declared
from vace.server.service.errors import Gone, InvalidInput, NotFound, ServiceError
from vace.server.service.predictions import PredictionService
from vace.server.service.tenants import Tenant
from vace.server.service.webhooks import WebhookMessage
from vace.server.store import Prediction, new_id

DIALECT = "wavespeed"
PREFIX = "/api/v3"
SYNC_WAIT_S = 3600.0


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z") if ts else None


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ws.envelope(None, status, message), status_code=status, headers=headers)


def render_service_error(request: Request, exc: ServiceError) -> JSONResponse:
    status = 400 if exc.status == 422 else exc.status
    message = ("Invalid input: " + "; ".join(f"{f}: {m}" for f, m in exc.errors)) if exc.errors else exc.detail
    return error_response(status, message, exc.headers)


def sign_v3(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """WaveSpeed's signature: hex HMAC-SHA256 of `id.timestamp.body`, keyed with the secret minus `whsec_`."""
    key = secret.removeprefix("whsec_").encode()
    return "v3," + hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def prediction_data(pred: Prediction, service: PredictionService) -> dict[str, Any]:
    """A store Prediction as WaveSpeed's `data` object."""
    url = service.output_url(pred) if pred.status == "succeeded" else None
    outputs = [url] if url else []
    metrics = pred.metrics or {}
    error = pred.error or ("canceled" if pred.status == "canceled" else "")
    data = {
        "id": pred.id, "model": ws.MODEL_ID, "outputs": outputs,
        "urls": {"get": service.url(f"{PREFIX}/predictions/{pred.id}/result")},
        "has_nsfw_contents": ws.nsfw_flags(pred.output, outputs), "status": ws.STATUSES[pred.status],
        "created_at": iso(pred.created_at), "error": error,
        "timings": {"inference": int(round(metrics["predict_time"] * 1000))} if metrics.get("predict_time")
        else {},
    }
    safety = (pred.output or {}).get("safety")
    if safety and not safety.get("checked") and outputs:
        data["safety_checker"] = f"not checked: {safety.get('note', '')}"
    return data


def webhook_message(pred: Prediction, event: str, service: PredictionService) -> WebhookMessage | None:
    if event != "completed":
        return None
    body = json.dumps(prediction_data(pred, service)).encode()
    msg_id, ts = f"msg_{new_id()}", int(time.time())
    return WebhookMessage(body, {"webhook-id": msg_id, "webhook-timestamp": str(ts),
                                 "webhook-signature": sign_v3(service.webhook_secret_for(pred.owner), msg_id, ts,
                                                              body)})


class WaveSpeedAPI:
    def __init__(self, app: FastAPI):
        self.app = app
        self.service: PredictionService = app.state.service

    async def create(self, body: Any, webhook: str | None, tenant: Tenant) -> Prediction:
        data = ws.parse_input(body)
        if data.enable_safety_checker and (refused := safety.refusal(self.app.state.safety)):
            raise WaveSpeedInputError([("enable_safety_checker", refused)])
        job = ws.build_job(data)
        settings = self.app.state.settings
        model = pick_model(settings.served_models(), False, ws.MODEL_ID)
        preflight(job.request, settings, model, lambda f: ws.wavespeed_field(f, data),
                  lambda f, m: WaveSpeedInputError([(f, m)]))
        try:
            return await self.service.create(endpoint=ws.MODEL_ID, model=model, job=Job(job.request, job.deliver),
                                             input=body, dialect=DIALECT, webhook=webhook,
                                             webhook_events=["completed"] if webhook else None,
                                             extra={"wavespeed": {"sync_mode": job.sync_mode}}, tenant=tenant)
        except InvalidInput as exc:
            raise WaveSpeedInputError([(ws.wavespeed_field(f, data), m) for f, m in exc.errors]) from exc

    def router(self) -> APIRouter:
        r = APIRouter(prefix=PREFIX, dependencies=[Depends(require_api_key)], tags=["wavespeed"])
        svc = self.service

        @r.post(f"/{ws.MODEL_ID}", summary="Submit a wan-2.1-14b-vace task (?webhook=URL)",
                openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/WaveSpeedInput_wan_2_1_14b_vace"}}}}})
        async def submit(request: Request, webhook: str | None = None) -> JSONResponse:
            try:
                body = await request.json()
            except ValueError:
                return error_response(400, "Invalid input: the request body must be JSON")
            try:
                pred = await self.create(body, webhook, tenant_of(request))
            except WaveSpeedInputError as exc:
                return error_response(400, exc.message)
            if pred.extra.get("wavespeed", {}).get("sync_mode"):
                pred = await svc.wait(pred.id, SYNC_WAIT_S)
            return JSONResponse(ws.envelope(prediction_data(pred, svc)))

        @r.get("/predictions/{prediction_id}/result", summary="A prediction's status and outputs",
               responses=declared(410))
        @r.get("/predictions/{prediction_id}", summary="A prediction's status and outputs", responses=declared(410))
        def result(prediction_id: str, request: Request) -> JSONResponse:
            pred = svc.get(prediction_id, tenant_of(request))
            if pred.dialect != DIALECT:
                raise NotFound(f"prediction {prediction_id!r} not found")
            if pred.data_removed and pred.status == "succeeded":
                raise Gone(f"prediction {prediction_id}: its outputs were removed after the server's retention "
                           "period (--output-retention-hours)")
            return JSONResponse(ws.envelope(prediction_data(pred, svc)))

        @r.post("/media/upload/binary", summary="Upload a file to use as an input")
        async def upload(request: Request, file: UploadFile = File(...)) -> JSONResponse:
            data = await file.read()
            record = await asyncio.to_thread(svc.files.save, file.filename or "file", file.content_type, data,
                                             tenant=tenant_of(request))
            kind = record.content_type.split("/")[0] if "/" in record.content_type else "file"
            return JSONResponse(ws.envelope({"type": kind, "download_url": svc.url(f"/v1/files/{record.id}/download"),
                                             "filename": record.name, "size": record.size}))

        @r.get("/webhook/secret", summary="The secret webhooks are signed with (v3 scheme)")
        def webhook_secret(request: Request) -> JSONResponse:
            return JSONResponse(ws.envelope({"secret": svc.webhook_secret_for(tenant_of(request).owner)}))

        return r


def install(app: FastAPI) -> None:
    service: PredictionService = app.state.service
    app.include_router(WaveSpeedAPI(app).router())
    service.webhooks.formatters[DIALECT] = functools.partial(webhook_message, service=service)
    app.state.error_renderers.append((PREFIX + "/", render_service_error))
    app.state.openapi_input_schemas["WaveSpeedInput_wan_2_1_14b_vace"] = ws.WaveSpeedVaceInput.model_json_schema()
