"""The helper weights a request needs (frame interpolator, prompt extender) and whether they are in place.

Checked when a request is submitted (so a job that cannot run is never queued) and again when the worker
prepares it.
"""

from __future__ import annotations

from pathlib import Path

from vace.pipelines.job.request import GenerationRequest, RequestError
from vace.weights.catalog import INTERPOLATORS, PROMPT_EXTENDERS, HelperDirs


def needs_interpolator(request: GenerationRequest) -> bool:
    """Frames are made between rendered ones: interpolation asked for, or downsampling to restore."""
    return bool(request.interpolated_frames or request.temporal_downsample or request.auto_downsample)


def has_images(request: GenerationRequest) -> bool:
    return bool(request.reference_images or request.first_frame or request.last_frame)


def require_helpers(request: GenerationRequest, helpers: HelperDirs, model_dir: str | Path | None) -> None:
    """RequestError naming the missing folder, the server option and the fetch command."""
    if needs_interpolator(request):
        missing = INTERPOLATORS[request.interpolator].describe_missing(
            helpers.interpolator_dir(request.interpolator, model_dir))
        if missing:
            raise RequestError("interpolator", missing)
    if request.expand_prompt:
        name, folder = helpers.extender_for(has_images(request), model_dir)
        missing = PROMPT_EXTENDERS[name].describe_missing(folder)
        if missing:
            raise RequestError("expand_prompt", missing)
