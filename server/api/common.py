"""API dialects. Each module listed in DIALECTS defines `install(app)`: routes, error bodies, webhooks."""

from __future__ import annotations

from typing import Any

from vace.pipelines.conditioning.tasks import preflight as task_preflight
from vace.pipelines.job.request import RequestError

DIALECTS = ("vace.server.api.replicate.routes", "vace.server.api.fal.routes", "vace.server.api.wavespeed.routes")


def preflight(request: Any, rename: Any, error: Any) -> None:
    """Refuse at submit time what the worker would refuse (unknown task, task options, missing annotator
    weights): pipelines.tasks.preflight's RequestError becomes `error(rename(field), message)`, the field
    without its `task_options.` prefix; rename None keeps GenerationRequest's own field path."""
    try:
        task_preflight(request)
    except RequestError as exc:
        field = rename(exc.field.removeprefix("task_options.")) if rename else exc.field
        raise error(field, exc.message) from exc
