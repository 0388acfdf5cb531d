"""Fetch and decode the media a GenerationRequest names into TaskInputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vace.pipelines.conditioning.primitives import TaskInputs
from vace.pipelines.conditioning.temporal import read_ahead
from vace.pipelines.job.request import MAX_FRAMES, GenerationRequest, RequestError
from vace.pipelines.media.codec import image_to_array, is_image, load_image, load_video
from vace.pipelines.media.fetch import FetchPolicy, materialize


def _mask_array(path: Path, field: str, max_frames: int | None,
                fit: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(mask_video, mask_image): a single image applies to every frame."""
    if is_image(path):
        return None, image_to_array(load_image(path, field)).mean(axis=-1)
    return load_video(path, field, max_frames, fit=fit, gray=True).frames, None


def load_inputs(request: GenerationRequest, work_dir: Path, policy: FetchPolicy | None = None) -> TaskInputs:
    """Materialize every media reference of the request and decode it: videos and mask videos as uint8, scaled
    down in the decoder only as far as still covers the output size (tasks crop and place them)."""
    work_dir.mkdir(parents=True, exist_ok=True)

    def local(ref: str, field: str) -> Path:
        return materialize(ref, field, work_dir, policy)

    # Source clips longer than needed are cut at decode time; match_input_num_frames needs at most MAX_FRAMES
    # (the longest output), so a long clip is never decoded whole.
    max_frames = MAX_FRAMES if request.task_options.get("match_input_num_frames") else request.num_frames
    max_frames += read_ahead(request)
    fit = (request.width, request.height)
    inputs = TaskInputs(width=request.width, height=request.height, num_frames=request.num_frames,
                        options=dict(request.task_options))
    if request.video:
        path = local(request.video, "video")
        if is_image(path):
            raise RequestError("video", "expected a video, got a still image")
        inputs.video = load_video(path, "video", max_frames, fit=fit)
    if request.mask:
        inputs.mask_video, inputs.mask_image = _mask_array(local(request.mask, "mask"), "mask", max_frames, fit)
    inputs.reference_images = [
        load_image(local(ref, f"reference_images[{i}]"), f"reference_images[{i}]")
        for i, ref in enumerate(request.reference_images)
    ]
    if request.first_frame:
        inputs.first_frame = load_image(local(request.first_frame, "first_frame"), "first_frame")
    if request.last_frame:
        inputs.last_frame = load_image(local(request.last_frame, "last_frame"), "last_frame")
    return inputs
