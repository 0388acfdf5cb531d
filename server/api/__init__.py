"""API dialects. Each module listed in DIALECTS defines `install(app)`: routes, error bodies, webhooks."""

from __future__ import annotations

from typing import Any

DIALECTS = ("server.api.replicate", "server.api.fal", "server.api.wavespeed")


def preflight(request: Any, rename: Any, error: Any) -> None:
    """Refuse at submit time what the worker would refuse (unknown task, task options, missing annotator
    weights): pipelines.tasks.preflight's RequestError becomes `error(rename(field), message)`, the field
    without its `task_options.` prefix; rename None keeps GenerationRequest's own field path."""
    from pipelines.request import RequestError
    from pipelines.tasks import preflight as task_preflight

    try:
        task_preflight(request)
    except RequestError as exc:
        field = rename(exc.field.removeprefix("task_options.")) if rename else exc.field
        raise error(field, exc.message) from exc
