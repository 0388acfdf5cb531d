"""fal's API: the synchronous route at the root and the queue API under /queue. Thin: JSON <-> the service.

Clients set FAL_RUN_HOST=<host:port> and FAL_QUEUE_RUN_HOST=<host:port>/queue. Requests are readable
under `/queue/{app}/requests/{id}` and `/queue/{app}/{sub}/requests/{id}` (the client drops the sub-path).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import json
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from vace.pipelines.acceleration.presets import preset_for_acceleration
from vace.pipelines.job.job import Job
from vace.pipelines.job.request import RequestError
from vace.pipelines.media.probe import probe_media
from vace.pipelines.outputs import safety
from vace.server.api.common import preflight
from vace.server.api.fal import schema as fs
from vace.server.api.fal.schema import FalInputError
from vace.server.api.models import pick_model
from vace.server.auth import require_api_key, tenant_of
from vace.server.service.errors import InvalidInput, ServiceError
from vace.server.service.predictions import PredictionService
from vace.server.service.tenants import Tenant
from vace.server.service.webhooks import WebhookMessage
from vace.server.store import CANCELED, FAILED, PROCESSING, QUEUED, Prediction

DIALECT = "fal"
QUEUE = "/queue"
_STATUS = {QUEUED: "IN_QUEUE", PROCESSING: "IN_PROGRESS"}
SYNC_WAIT_S = 3600.0
REQUEST_ID_HEADER = "x-fal-request-id"  # fal clients read the request id of a result from this header


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat() if ts else None


def fal_error(status: int, detail: Any, error_type: str | None = None,
              headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"detail": detail}
    if error_type:
        body["error_type"] = error_type
    return JSONResponse(body, status_code=status, headers=headers)


def error_responses(described: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """`responses=` for fal error bodies a route answers itself: status code -> when."""
    schema = {"type": "object", "required": ["detail"], "properties": {"detail": {}, "error_type": {"type": "string"}}}
    return {code: {"description": text, "content": {"application/json": {"schema": schema}}}
            for code, text in described.items()}


def status_responses(statuses: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """`responses=` of the cancel route, which answers `{"status": NAME}`: status code -> NAME."""
    return {code: {"description": name, "content": {"application/json": {"schema": {
        "type": "object", "required": ["status"], "properties": {"status": {"const": name}}}}}}
        for code, name in statuses.items()}


def for_request(response: Response, request_id: str) -> Response:
    """The response, carrying the id of the request it is about."""
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


def render_service_error(request: Request, exc: ServiceError) -> JSONResponse:
    """fal's error bodies: 422 `detail` list for bad input, `{"detail": "..."}` otherwise."""
    if exc.status == 422:
        detail = [{"loc": ["body", *f.split(".")], "msg": m, "type": "value_error"} for f, m in exc.errors]
        return fal_error(422, detail or exc.detail, headers=exc.headers)
    return fal_error(exc.status, exc.detail, headers=exc.headers)


def log_entries(pred: Prediction) -> list[dict[str, Any]]:
    """fal's log list: each line with the time the worker wrote it (the last change for lines without one)."""
    times = pred.log_times or []
    lines = [line for line in pred.logs.splitlines() if line]
    return [{"message": line, "level": "INFO", "source": "USER",
             "timestamp": iso(times[i] if i < len(times) else pred.updated_at)}
            for i, line in enumerate(lines) if line.strip()]


# What the result of a finished request can be instead of its output (see FalAPI.outcome_error).
RESULT_ERRORS = error_responses({
    400: "Still in progress, or cancelled", 410: "The output was removed after the retention period",
    422: "Invalid input found by the worker, or the output was flagged by the safety checker",
    500: "The render failed"})


class FalAPI:
    def __init__(self, app: FastAPI):
        self.app = app
        self.service: PredictionService = app.state.service

    # ---- URLs and shapes ---------------------------------------------------------------------------------------

    def request_url(self, pred: Prediction) -> str:
        return self.service.url(f"{QUEUE}/{pred.endpoint}/requests/{pred.id}")

    def status_json(self, pred: Prediction, with_logs: bool) -> dict[str, Any]:
        base = self.request_url(pred)
        status = _STATUS.get(pred.status, "COMPLETED")
        body: dict[str, Any] = {"status": status, "request_id": pred.id, "response_url": base,
                                "status_url": f"{base}/status", "cancel_url": f"{base}/cancel",
                                "logs": log_entries(pred) if with_logs else None}
        if status == "IN_QUEUE":
            body["queue_position"] = self.service.queue_position(pred)
        if status == "COMPLETED":
            body["metrics"] = {"inference_time": (pred.metrics or {}).get("predict_time")}
            error = self.outcome_error(pred)
            if error:
                body["error"], body["error_type"] = error[1], error[2]
        return body

    def outcome_error(self, pred: Prediction) -> tuple[int, str, str] | None:
        """(HTTP status, message, error_type) of a finished prediction that has no output to hand out."""
        if pred.status == CANCELED:
            return 400, "the request was cancelled", "request_cancelled"
        if pred.status == FAILED:
            message = pred.error or "failed"
            if message.startswith("invalid input:"):
                return 422, message, "validation_error"
            return 500, message, "internal_server_error"
        if pred.data_removed:
            return 410, "the output of this request was removed after the server's retention period " \
                "(--output-retention-hours)", "request_data_removed"
        safety = (pred.output or {}).get("safety")
        if safety and safety.get("checked") and safety.get("nsfw"):
            return 422, "the output video was flagged by the safety checker (NSFW content)", \
                "content_policy_violation"
        return None

    def file_url(self, rel: str, inline: bool, content_type: str) -> str:
        if inline:
            data = self.service.storage.read_bytes(rel)
            return f"data:{content_type};base64," + base64.b64encode(data).decode()
        return self.service.url(rel)

    def output_json(self, pred: Prediction) -> dict[str, Any]:
        output = pred.output or {}
        inline = bool(pred.extra.get("fal", {}).get("sync_mode"))
        video = self.file_url(output["path"], inline, "video/mp4")
        frames_zip = output.get("frames_zip")
        zip_url = self.file_url(frames_zip["path"], inline, "application/zip") if frames_zip else None
        # The prompt the render used: the expanded one when enable_prompt_expansion rewrote it.
        body = fs.output_json(output.get("prompt") or pred.input.get("prompt", ""), output, video, zip_url)
        safety = output.get("safety")
        if safety and not safety.get("checked"):
            body["safety_checker"] = f"not checked: {safety.get('note', '')}"
        return body

    def result_response(self, pred: Prediction) -> Response:
        if not pred.terminal:
            return fal_error(400, "Request is still in progress")
        error = self.outcome_error(pred)
        if error:
            status, message, error_type = error
            detail: Any = message
            if status == 422:
                field, _, msg = message.removeprefix("invalid input:").strip().partition(": ")
                loc = ["body", fs.fal_field(field, pred.extra.get("fal", {}).get("media_fields"))] if msg else ["body"]
                detail = [{"loc": loc, "msg": msg or message, "type": error_type}]
            return fal_error(status, detail, error_type)
        body = self.output_json(pred)
        if pred.extra.get("fal", {}).get("sync_mode"):
            self.forget(pred)
        return JSONResponse(body)

    def forget(self, pred: Prediction) -> None:
        """sync_mode keeps no history: drop the row and the files once the result was handed out."""
        self.service.store.delete(pred.id)
        for item in (pred.output or {}, (pred.output or {}).get("frames_zip") or {}):
            if item.get("path"):
                self.service.storage.delete(item["path"])

    # ---- create ------------------------------------------------------------------------------------------------

    async def create(self, app_id: str, sub: str, request: Request) -> Prediction:
        try:
            body = await request.json()
        except ValueError:
            raise FalInputError([{"loc": ["body"], "msg": "the request body must be JSON",
                                  "type": "json_invalid"}]) from None
        data = fs.parse_input(sub, body)
        if data.enable_safety_checker and (refused := safety.refusal(self.app.state.safety)):
            raise FalInputError.of("enable_safety_checker", refused)
        tenant = tenant_of(request)
        job, model = await self.service.intake.run(self.build, app_id, sub, data, tenant)  # probes: own pool
        webhook = request.query_params.get("fal_webhook")
        extra = {"fal": {"sync_mode": job.sync_mode, "media_fields": job.media_fields}}
        try:
            return await self.service.create(
                endpoint=f"{app_id}/{sub}".rstrip("/"), model=model, job=Job(job.request, job.deliver),
                input=body, dialect=DIALECT, webhook=webhook, webhook_events=["completed"] if webhook else None,
                extra=extra, tenant=tenant)
        except InvalidInput as exc:
            if exc.errors and exc.errors[0][0] == "webhook":
                raise FalInputError.of("fal_webhook", exc.errors[0][1]) from exc
            raise FalInputError([{"loc": ["body", fs.fal_field(f, job.media_fields)], "msg": m,
                                  "type": "value_error"} for f, m in exc.errors]) from exc

    def build(self, app_id: str, sub: str, data: fs.FalCommon, tenant: Tenant) -> tuple[fs.FalJob, str]:
        """The job (inputs probed for `auto` sizes) and the served model it runs on, checked like the worker will."""
        def probe(ref: str, field_name: str) -> fs.MediaInfo:
            try:
                resolved = self.service.urls.resolve_media(ref, field_name, tenant)
                return probe_media(resolved, field_name, self._probe_policy())
            except InvalidInput as exc:
                raise FalInputError.of(field_name, exc.errors[0][1] if exc.errors else exc.detail) from exc
            except RequestError as exc:
                raise FalInputError.of(field_name, exc.message) from exc

        settings = self.app.state.settings
        turbo = settings.turbo_map()
        job = fs.build_job(app_id, sub, data, probe=probe,
                           preset_for=lambda value: preset_for_acceleration(value, turbo))
        model = pick_model(settings.served_models(), job.two_experts, app_id)
        preflight(job.request, settings, model, lambda f: fs.fal_field(f, job.media_fields), FalInputError.of)
        return job, model

    def _probe_policy(self) -> Any:
        return dataclasses.replace(self.service.fetch_policy, allow_local_paths=True)

    # ---- routes ------------------------------------------------------------------------------------------------

    def lookup(self, app_id: str, request_id: str, tenant: Tenant) -> Prediction | None:
        pred = self.service.store.get(request_id)
        if pred is None or pred.dialect != DIALECT or not (pred.endpoint + "/").startswith(app_id + "/"):
            return None
        if not tenant.sees(pred.owner):
            return None
        return pred

    def router(self) -> APIRouter:
        r = APIRouter(dependencies=[Depends(require_api_key)], tags=["fal"])
        for app_id, sub in fs.endpoints():
            self._add_endpoint(r, app_id, sub)
        for app_id in fs.APPS:
            for suffix in ("", "/{sub}"):
                self._add_request_routes(r, app_id, f"{QUEUE}/{app_id}{suffix}/requests/{{request_id}}")
        return r

    def _add_endpoint(self, r: APIRouter, app_id: str, sub: str) -> None:
        path = f"/{app_id}/{sub}".rstrip("/")
        schema = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
            "$ref": f"#/components/schemas/{schema_name(sub)}"}}}}}

        async def run_sync(request: Request) -> Response:
            try:
                pred = await self.create(app_id, sub, request)
            except FalInputError as exc:
                return fal_error(422, exc.detail)
            pred = await self.service.wait(pred.id, SYNC_WAIT_S)
            if not pred.terminal:
                self.service.cancel(pred.id)
                return for_request(fal_error(504, "the request did not finish in time", "request_timeout"), pred.id)
            # sync mode inlines the video: reading it (from a bucket, perhaps) must not stall the loop
            return for_request(await asyncio.to_thread(self.result_response, pred), pred.id)

        async def submit(request: Request) -> Response:
            try:
                pred = await self.create(app_id, sub, request)
            except FalInputError as exc:
                return fal_error(422, exc.detail)
            return for_request(JSONResponse(self.status_json(pred, with_logs=False)), pred.id)

        r.add_api_route(path, run_sync, methods=["POST"], summary=f"Run {path} and wait for the output",
                        openapi_extra=schema, name=f"fal_run_{path}", responses={
                            **RESULT_ERRORS, **error_responses({504: "The request did not finish in time"})})
        r.add_api_route(f"{QUEUE}{path}", submit, methods=["POST"], summary=f"Queue {path} (?fal_webhook=URL)",
                        openapi_extra=schema, name=f"fal_submit_{path}")

    def _add_request_routes(self, r: APIRouter, app_id: str, base: str) -> None:
        def found(request: Request, request_id: str, sub: str | None) -> Prediction | None:
            if sub is not None and sub not in fs.SUBPATHS:
                return None
            return self.lookup(app_id, request_id, tenant_of(request))

        def status(request: Request, request_id: str, logs: str = "0", sub: str | None = None) -> Response:
            pred = found(request, request_id, sub)
            if pred is None:
                return fal_error(404, f"request {request_id} not found")
            body = self.status_json(pred, with_logs=logs.lower() in ("1", "true", "yes"))
            return for_request(JSONResponse(body, status_code=200 if body["status"] == "COMPLETED" else 202), pred.id)

        async def stream(request: Request, request_id: str, logs: str = "0", sub: str | None = None) -> Response:
            if found(request, request_id, sub) is None:
                return fal_error(404, f"request {request_id} not found")
            with_logs = logs.lower() in ("1", "true", "yes")

            async def events():
                async for pred in self.service.updates(request_id):
                    if await request.is_disconnected():
                        return
                    yield f"data: {json.dumps(self.status_json(pred, with_logs))}\n\n"

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-store", REQUEST_ID_HEADER: request_id})

        def result(request: Request, request_id: str, sub: str | None = None) -> Response:
            pred = found(request, request_id, sub)
            if pred is None:
                return fal_error(404, f"request {request_id} not found")
            return for_request(self.result_response(pred), pred.id)

        def cancel(request: Request, request_id: str, sub: str | None = None) -> Response:
            pred = found(request, request_id, sub)
            if pred is None:
                return JSONResponse({"status": "NOT_FOUND"}, status_code=404)
            if pred.terminal:
                return for_request(JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400), pred.id)
            self.service.cancel(request_id)
            return for_request(JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202), pred.id)

        tag = base.replace("/", "_").replace("{", "").replace("}", "")
        r.add_api_route(f"{base}/status", status, methods=["GET"], summary="Request status (?logs=1)",
                        name=f"fal_status{tag}", responses={202: {
                            "description": "IN_QUEUE or IN_PROGRESS (200: COMPLETED)",
                            "content": {"application/json": {"schema": {"type": "object", "required": ["status"]}}}}})
        r.add_api_route(f"{base}/status/stream", stream, methods=["GET"], summary="Status as server-sent events",
                        name=f"fal_stream{tag}")
        r.add_api_route(base, result, methods=["GET"], summary="The output (or the error)", name=f"fal_result{tag}",
                        responses=RESULT_ERRORS)
        r.add_api_route(f"{base}/cancel", cancel, methods=["PUT"], summary="Cancel the request",
                        name=f"fal_cancel{tag}", status_code=202, responses=status_responses(
                            {202: "CANCELLATION_REQUESTED", 400: "ALREADY_COMPLETED", 404: "NOT_FOUND"}))


def schema_name(sub: str) -> str:
    return f"FalInput_{sub or 'base'}"


def webhook_message(pred: Prediction, event: str, api: FalAPI) -> WebhookMessage | None:
    """fal's completion webhook: {request_id, gateway_request_id, status: OK|ERROR, payload, error}."""
    if event != "completed":
        return None
    error = api.outcome_error(pred)
    body = {"request_id": pred.id, "gateway_request_id": pred.id, "status": "ERROR" if error else "OK",
            "payload": None if error else api.output_json(pred), "error": error[1] if error else None}
    return WebhookMessage(json.dumps(body).encode(), {})


def install(app: FastAPI) -> None:
    service: PredictionService = app.state.service
    api = FalAPI(app)
    app.include_router(api.router())
    service.webhooks.formatters[DIALECT] = functools.partial(webhook_message, api=api)
    for prefix in [f"/{a}" for a in fs.APPS] + [f"{QUEUE}/{a}" for a in fs.APPS]:
        app.state.error_renderers.append((prefix, render_service_error))
    for sub, model in fs.SCHEMAS.items():
        app.state.openapi_input_schemas[schema_name(sub)] = model.model_json_schema()


__all__ = ["install", "FalAPI"]
