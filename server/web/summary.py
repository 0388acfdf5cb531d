"""One prediction as the operator's page sees it, whichever API created it (dialect-free JSON)."""

from __future__ import annotations

from typing import Any

from vace.pipelines.job.request import changed_media
from vace.server.service.predictions import PredictionService
from vace.server.storage import output_name, upload_id
from vace.server.store import Prediction

SHORT_DATA_URI = 256  # list views elide data: URIs longer than this (they can be megabytes)


def media_url(service: PredictionService, value: str | None) -> str | None:
    """A request's media reference as a URL a client may submit again: this server's uploads and outputs
    (stored as storage refs once resolved) become their URLs; URLs and data: URIs stay as they are."""
    if not value or value.startswith(("http://", "https://", "data:")):
        return value
    rel = service.storage.rel_of(value) or ""
    if file_id := upload_id(rel):
        return service.url(f"/v1/files/{file_id}")
    if name := output_name(rel):
        return service.url(f"/outputs/{name}")
    return None  # not ours: never show a server path or a bucket's URL


def _elide(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("data:") and len(value) > SHORT_DATA_URI:
        return f"{value[:value.find(',') + 1]}... ({len(value)} characters)"
    if isinstance(value, list):
        return [_elide(v) for v in value]
    if isinstance(value, dict):
        return {k: _elide(v) for k, v in value.items()}
    return value


def rerun_input(service: PredictionService, request: dict[str, Any]) -> dict[str, Any]:
    """The native input (vace/<model>) that renders a request again, with media as URLs."""
    data = {k: v for k, v in request.items() if k != "model" and v not in (None, [], {})}
    data |= changed_media(data, lambda ref, _: media_url(service, ref))
    return {k: v for k, v in data.items() if v not in (None, [], {})}


def summary(pred: Prediction, service: PredictionService, position: int | None = None,
            full: bool = False, preview: bool = True) -> dict[str, Any]:
    """`full` keeps data: URIs whole (one prediction's page); `preview` False leaves the preview image out."""
    request = pred.job.request.to_dict()
    steps = int(request.get("steps") or 0)
    metrics = pred.metrics or {}
    output = pred.output or {}
    url = service.output_url(pred)
    trim = (lambda v: v) if full else _elide
    body: dict[str, Any] = {
        "id": pred.id, "endpoint": pred.endpoint, "dialect": pred.dialect, "model": pred.model,
        "status": pred.status, "position": position, "progress": pred.progress,
        "step": round((pred.progress or 0.0) * steps / 100) if steps else None, "steps": steps or None,
        "created_at": pred.created_at, "started_at": pred.started_at, "completed_at": pred.completed_at,
        "cancel_requested": pred.cancel_requested, "error": pred.error,
        "seed": pred.seed if pred.seed is not None else metrics.get("seed"),
        "predict_time": metrics.get("predict_time"), "gpu_seconds": metrics.get("gpu_seconds"),
        "timings": metrics.get("timings"), "loras": metrics.get("loras"),
        "transformer_evaluations": metrics.get("transformer_evaluations"),
        "output": {"url": url, **{k: output.get(k) for k in ("width", "height", "fps", "num_frames", "duration")}}
        if url else None,
        "data_removed": pred.data_removed,
        "input": trim(pred.input), "rerun": trim(rerun_input(service, request)),
        "page": service.url(f"/p/{pred.id}"),
    }
    if preview:
        body["preview"] = pred.preview
    return body
