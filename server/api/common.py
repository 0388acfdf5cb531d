"""API dialects. Each module listed in DIALECTS defines `install(app)`: routes, error bodies, webhooks."""

from __future__ import annotations

from typing import Any

from vace.pipelines.conditioning.annotators import AnnotatorEnv
from vace.pipelines.conditioning.tasks import preflight as task_preflight
from vace.pipelines.job.request import RequestError
from vace.server.settings import ServeSettings

DIALECTS = ("vace.server.api.replicate.routes", "vace.server.api.fal.routes", "vace.server.api.wavespeed.routes")


def annotator_env(settings: ServeSettings, model: str) -> AnnotatorEnv:
    """Where the worker looks for the annotator weights of a job on the served `model`: --annotators-dir, else
    `annotators/` beside that model's directory."""
    return AnnotatorEnv.for_model(settings.served_models().get(model), configured=settings.annotators_dir)


def preflight(request: Any, settings: ServeSettings, model: str, rename: Any, error: Any) -> None:
    """Refuse at submit time what the worker running it on `model` would refuse (unknown task, task options,
    missing annotator weights): pipelines.tasks.preflight's RequestError becomes `error(rename(field), message)`,
    the field without its `task_options.` prefix; rename None keeps GenerationRequest's own field path."""
    try:
        task_preflight(request, annotator_env(settings, model))
    except RequestError as exc:
        field = rename(exc.field.removeprefix("task_options.")) if rename else exc.field
        raise error(field, exc.message) from exc
