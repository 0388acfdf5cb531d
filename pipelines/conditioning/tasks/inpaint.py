"""Inpainting: the masked region filled gray, mask 1 inside it; a mask image can be tracked with SAM 2."""

from __future__ import annotations

import numpy as np

from vace.pipelines.conditioning import annotators
from vace.pipelines.conditioning.primitives import GRAY, Conditioning, TaskInputs
from vace.pipelines.conditioning.tasks.options import TaskOptions
from vace.pipelines.conditioning.tasks.registry import TaskContext, task
from vace.pipelines.conditioning.tasks.sources import (
    mask_image_at_output,
    mask_video_at_output,
    references,
    source_video,
)
from vace.pipelines.job.request import RequestError


def tracking_mode(inputs: TaskInputs, options: TaskOptions, default: str) -> str:
    """'sam2' only when there is a mask image to track (a mask video is used as given)."""
    if inputs.mask_video is not None or inputs.mask_image is None:
        return "none"
    return options.mask_tracking or default


def inpaint(inputs: TaskInputs, ctx: TaskContext, default_tracking: str) -> tuple[np.ndarray, np.ndarray]:
    video = source_video(inputs)
    if inputs.mask_video is None and inputs.mask_image is None:
        raise RequestError("mask", f"task {ctx.task} needs a mask video or a mask image")
    if tracking_mode(inputs, ctx.options, default_tracking) == "sam2":
        tracker = annotators.load("sam2", ctx.env)
        mask = tracker.track(video, mask_image_at_output(inputs), ctx.env.progress)
    else:
        mask = mask_video_at_output(inputs)
    video[mask > 0.5] = GRAY  # source_video() returned a fresh array: fill it in place, no second copy
    return video, mask


def tracking_needs(default: str):
    def needs(inputs: TaskInputs, options: TaskOptions) -> list[str]:
        return ["sam2"] if tracking_mode(inputs, options, default) == "sam2" else []

    return needs


@task("inpainting", "masked region gray, mask 1 inside (mask video, or mask image: static or mask_tracking=sam2)",
      needs=tracking_needs("none"))
def inpainting(inputs: TaskInputs, ctx: TaskContext) -> Conditioning:
    video, mask = inpaint(inputs, ctx, "none")
    return Conditioning(video, mask, references(inputs))
