"""Named VACE tasks: each builds the (video, mask, reference images) triple from the user's inputs.

`build(task, inputs)` validates task_options (pipelines.tasks.options), applies match_input_*,
checks that every annotator the task will run has its weights (RequestError before any model work),
then runs the builder. `preflight(request)` does the same checks from the request alone (no media
decoded), for servers that want to refuse a job before queueing it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vace.pipelines.conditioning import annotators
from vace.pipelines.conditioning.annotators import AnnotatorEnv
from vace.pipelines.conditioning.primitives import Conditioning, TaskInputs
from vace.pipelines.conditioning.tasks import canvas, compose, control, frames, inpaint  # noqa: F401  (register the tasks)
from vace.pipelines.conditioning.tasks.options import TaskOptions, parse_options
from vace.pipelines.conditioning.tasks.registry import TASKS, TaskContext, TaskSpec, task
from vace.pipelines.job.request import MAX_FRAMES, MIN_FRAMES, GenerationRequest, RequestError

__all__ = ["TASKS", "TaskContext", "TaskSpec", "build", "implied_task", "infer_task", "preflight", "task"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def implied_task(video: bool, mask: bool, first_frame: bool, last_frame: bool, references: bool) -> str:
    """The task implied by which media are present (prunaai-style requests carry no task name)."""
    if first_frame or last_frame:
        if video:
            raise RequestError("first_frame", "first/last frame cannot be combined with a source video")
        if first_frame and last_frame:
            return "firstlastframe"
        return "firstframe" if first_frame else "lastframe"
    if video:
        return "inpainting" if mask else "control"
    return "r2v" if references else "t2v"


def infer_task(inputs: TaskInputs) -> str:
    """implied_task() for decoded inputs."""
    return implied_task(inputs.video is not None, inputs.mask_video is not None or inputs.mask_image is not None,
                        inputs.first_frame is not None, inputs.last_frame is not None, bool(inputs.reference_images))


def _spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise RequestError("task", f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def input_frame_count(available: int) -> int:
    """The largest 4n+1 count not above the input's length, within the request limits."""
    return min(max(((available - 1) // 4) * 4 + 1, MIN_FRAMES), MAX_FRAMES)


def match_input(inputs: TaskInputs, options: TaskOptions) -> TaskInputs:
    if options.match_input_num_frames and inputs.video is not None:
        return dataclasses.replace(inputs, num_frames=input_frame_count(len(inputs.video.frames)))
    return inputs


def checked(name: str, inputs: TaskInputs, env: AnnotatorEnv) -> tuple[TaskSpec, TaskOptions, list[str]]:
    """The task's spec and validated options, and the annotators it will run, each checked to have its
    weights here (RequestError otherwise). Shared by build() and preflight()."""
    spec = _spec(name)
    options = parse_options(name, inputs.options)
    needed = spec.needs(inputs, options)
    for annotator in needed:
        annotators.require(annotator, env)
    return spec, options, needed


def build(task_name: str | None, inputs: TaskInputs, env: AnnotatorEnv | None = None) -> Conditioning:
    """Run the named task builder (or the inferred one) and check the triple's shape."""
    name = task_name or infer_task(inputs)
    env = env or AnnotatorEnv()
    spec, options, _ = checked(name, inputs, env)
    inputs = match_input(inputs, options)
    cond = spec.builder(inputs, TaskContext(options=options, env=env, task=name))
    if options.match_input_frames_per_second and inputs.video is not None:
        cond.fps = float(min(max(inputs.video.fps, 1.0), 60.0))
    expected = (cond.num_frames, inputs.height, inputs.width)
    if cond.video.shape != (*expected, 3) or cond.mask.shape != expected:
        raise AssertionError(f"task {name} built video {cond.video.shape} / mask {cond.mask.shape}, "
                             f"expected {expected}")
    return cond


def _looks_like_image(ref: str) -> bool:
    ref = ref.lower()
    return ref.startswith("data:image/") or ref.split("?")[0].endswith(IMAGE_SUFFIXES)


def preflight(request: GenerationRequest, env: AnnotatorEnv | None = None) -> list[str]:
    """Check task name, task_options and annotator weights from the request alone; returns the annotators the
    job will run. Raises RequestError. (A mask counts as an image by its suffix or data: type.)"""
    placeholder = np.zeros((1, 1, 1), dtype=np.float32)
    inputs = TaskInputs(width=request.width, height=request.height, num_frames=request.num_frames,
                        options=dict(request.task_options))
    if request.mask:
        if _looks_like_image(request.mask):
            inputs.mask_image = placeholder[0]
        else:
            inputs.mask_video = placeholder
    name = request.task or implied_task(bool(request.video), bool(request.mask), bool(request.first_frame),
                                        bool(request.last_frame), bool(request.reference_images))
    return checked(name, inputs, env or AnnotatorEnv())[2]
