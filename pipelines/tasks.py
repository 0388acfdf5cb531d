"""Named VACE tasks: each builds the (video, mask, reference images) triple from the user's inputs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipelines.conditioning import (
    Conditioning,
    TaskInputs,
    binarize,
    default_conditioning,
    frame_from_image,
    gray_frames,
    mask_frames,
    reference_canvas,
)
from pipelines.media import fit_frame_count, resize_frames
from pipelines.request import RequestError

TaskBuilder = Callable[[TaskInputs], Conditioning]
TASKS: dict[str, TaskBuilder] = {}


def task(name: str) -> Callable[[TaskBuilder], TaskBuilder]:
    def register(fn: TaskBuilder) -> TaskBuilder:
        TASKS[name] = fn
        return fn

    return register


def _source_video(inputs: TaskInputs, field: str = "video") -> np.ndarray:
    """The input video at exactly the output size and frame count."""
    if inputs.video is None:
        raise RequestError(field, "this task needs a source video")
    frames = fit_frame_count(inputs.video.frames, inputs.num_frames)
    return resize_frames(frames, inputs.width, inputs.height)


def _source_mask(inputs: TaskInputs) -> np.ndarray:
    """The mask video (or one mask image for every frame) at exactly the output size, binarised."""
    if inputs.mask_video is not None:
        mask = fit_frame_count(inputs.mask_video, inputs.num_frames)
    elif inputs.mask_image is not None:
        mask = np.repeat(inputs.mask_image[None], inputs.num_frames, axis=0)
    else:
        raise RequestError("mask", "this task needs a mask video or mask image")
    return binarize(resize_frames(mask, inputs.width, inputs.height, mode="cover"))


@task("t2v")
def text_to_video(inputs: TaskInputs) -> Conditioning:
    return default_conditioning(inputs)


@task("r2v")
def reference_to_video(inputs: TaskInputs) -> Conditioning:
    if not inputs.reference_images:
        raise RequestError("reference_images", "reference-to-video needs at least one reference image")
    return default_conditioning(inputs)


@task("control")
def control_video(inputs: TaskInputs) -> Conditioning:
    """A ready-made control video (depth, pose, ... drawn already): mask all ones."""
    video = _source_video(inputs)
    n, w, h = inputs.num_frames, inputs.width, inputs.height
    return Conditioning(video, mask_frames(n, w, h), reference_canvas(inputs.reference_images, w, h))


@task("inpainting")
def inpainting(inputs: TaskInputs) -> Conditioning:
    """Masked region filled gray; mask 1 inside the region."""
    video = _source_video(inputs)
    mask = _source_mask(inputs)
    video = np.where(mask[..., None] > 0.5, np.float32(0.5), video).astype(np.float32)
    return Conditioning(video, mask, reference_canvas(inputs.reference_images, inputs.width, inputs.height))


def _frame_slots(inputs: TaskInputs, first: bool, last: bool) -> Conditioning:
    n, w, h = inputs.num_frames, inputs.width, inputs.height
    video, mask = gray_frames(n, w, h), mask_frames(n, w, h)
    if first:
        if inputs.first_frame is None:
            raise RequestError("first_frame", "this task needs a first frame image")
        video[0], mask[0] = frame_from_image(inputs.first_frame, w, h), 0.0
    if last:
        if inputs.last_frame is None:
            raise RequestError("last_frame", "this task needs a last frame image")
        video[-1], mask[-1] = frame_from_image(inputs.last_frame, w, h), 0.0
    return Conditioning(video, mask, reference_canvas(inputs.reference_images, w, h))


@task("firstframe")
def first_frame(inputs: TaskInputs) -> Conditioning:
    return _frame_slots(inputs, first=True, last=False)


@task("lastframe")
def last_frame(inputs: TaskInputs) -> Conditioning:
    return _frame_slots(inputs, first=False, last=True)


@task("firstlastframe")
def first_last_frame(inputs: TaskInputs) -> Conditioning:
    return _frame_slots(inputs, first=True, last=True)


def infer_task(inputs: TaskInputs) -> str:
    """The task implied by which media are present (prunaai-style requests carry no task name)."""
    if inputs.first_frame is not None or inputs.last_frame is not None:
        if inputs.video is not None:
            raise RequestError("first_frame", "first/last frame cannot be combined with a source video")
        if inputs.first_frame is not None and inputs.last_frame is not None:
            return "firstlastframe"
        return "firstframe" if inputs.first_frame is not None else "lastframe"
    if inputs.video is not None:
        has_mask = inputs.mask_video is not None or inputs.mask_image is not None
        return "inpainting" if has_mask else "control"
    return "r2v" if inputs.reference_images else "t2v"


def build(task_name: str | None, inputs: TaskInputs) -> Conditioning:
    """Run the named task builder (or the inferred one) and check the triple's shape."""
    name = task_name or infer_task(inputs)
    if name not in TASKS:
        raise RequestError("task", f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    cond = TASKS[name](inputs)
    expected = (cond.num_frames, inputs.height, inputs.width)
    assert cond.video.shape == (*expected, 3) and cond.mask.shape == expected, (cond.video.shape, expected)
    return cond
