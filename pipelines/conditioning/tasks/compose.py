"""Compositions: layout (moving box), move-, swap-, animate- and expand-anything."""

from __future__ import annotations

import numpy as np

from vace.pipelines.conditioning.annotators.simple import layout_frames
from vace.pipelines.conditioning.primitives import Conditioning, TaskInputs, gray_frames, mask_frames
from vace.pipelines.conditioning.tasks.canvas import outpaint_frames
from vace.pipelines.conditioning.tasks.control import annotator_needs, control_frames
from vace.pipelines.conditioning.tasks.inpaint import inpaint, tracking_needs
from vace.pipelines.conditioning.tasks.registry import TaskContext, task
from vace.pipelines.conditioning.tasks.sources import control, references, still_image
from vace.pipelines.job.request import RequestError
from vace.pipelines.media.codec import resize_frames


def _boxes(inputs: TaskInputs, ctx: TaskContext) -> list[list[float]]:
    if not ctx.options.boxes:
        raise RequestError("task_options.boxes",
                           f"task {ctx.task} needs boxes: [[x1, y1, x2, y2] start, ..., end] in output pixels")
    return ctx.options.boxes


@task("layout", "white frames with a 2 px black box moving linearly through the given boxes; mask all ones")
def layout(inputs: TaskInputs, ctx: TaskContext) -> Conditioning:
    return control(inputs, layout_frames(_boxes(inputs, ctx), inputs.num_frames, inputs.width, inputs.height))


@task("move-anything", "[image, then layout-box frames], mask [0, 1...]")
def move_anything(inputs: TaskInputs, ctx: TaskContext) -> Conditioning:
    n, w, h = inputs.num_frames, inputs.width, inputs.height
    video = layout_frames(_boxes(inputs, ctx), n, w, h)
    video[0] = _first_image(inputs)
    mask = mask_frames(n, w, h)
    mask[0] = 0.0
    return Conditioning(video, mask, references(inputs))


def _first_image(inputs: TaskInputs) -> np.ndarray:
    """first_frame (else the source video's first frame) cover-resized to the output size."""
    return resize_frames(still_image(inputs, "first_frame")[None], inputs.width, inputs.height)[0]


@task("swap-anything", "inpainting with the mask image tracked (SAM 2) + reference images",
      needs=tracking_needs("sam2"))
def swap_anything(inputs: TaskInputs, ctx: TaskContext) -> Conditioning:
    refs = references(inputs, required=True, task="swap-anything")
    video, mask = inpaint(inputs, ctx, "sam2")
    return Conditioning(video, mask, refs)


@task("animate-anything", "pose video (DWPose, or the given pose video with preprocess=false) + reference images",
      needs=annotator_needs("animate-anything"))
def animate_anything(inputs: TaskInputs, ctx: TaskContext) -> Conditioning:
    refs = references(inputs, required=True, task="animate-anything")  # refused before the pose model runs
    return control(inputs, control_frames(inputs, ctx, "animate-anything"), refs)


@task("expand-anything", "[outpainted image, then gray], mask [outpaint mask, 1...] + reference images")
def expand_anything(inputs: TaskInputs, ctx: TaskContext) -> Conditioning:
    refs = references(inputs, required=True, task="expand-anything")
    first, first_mask = outpaint_frames(still_image(inputs, "first_frame")[None], inputs, ctx)
    n, w, h = inputs.num_frames, inputs.width, inputs.height
    video, mask = gray_frames(n, w, h), mask_frames(n, w, h)
    video[0], mask[0] = first[0], first_mask[0]
    return Conditioning(video, mask, refs)
