"""Control-signal tasks: the source video (or its annotation) guides every frame; mask all ones."""

from __future__ import annotations

import numpy as np

from vace.pipelines.conditioning import annotators
from vace.pipelines.conditioning.primitives import Conditioning, TaskInputs
from vace.pipelines.conditioning.tasks.options import TaskOptions, annotator_for
from vace.pipelines.conditioning.tasks.registry import TaskContext, task
from vace.pipelines.conditioning.tasks.sources import control, source_video


def control_frames(inputs: TaskInputs, ctx: TaskContext, name: str) -> np.ndarray:
    """The source video at output size; with preprocess, run through the task's annotator."""
    video = source_video(inputs)
    if not ctx.options.preprocess:
        return video
    return annotators.load(annotator_for(name, ctx.options), ctx.env)(video, ctx.env.progress)


def annotator_needs(name: str):
    def needs(inputs: TaskInputs, options: TaskOptions) -> list[str]:
        return [annotator_for(name, options)] if options.preprocess else []

    return needs


@task("control", "a ready-made control video (depth, pose, ... drawn already), mask all ones")
def ready_control(inputs: TaskInputs, ctx: TaskContext) -> Conditioning:
    return control(inputs, source_video(inputs))


def _register(name: str, summary: str) -> None:
    def build(inputs: TaskInputs, ctx: TaskContext) -> Conditioning:
        return control(inputs, control_frames(inputs, ctx, name))

    task(name, summary, needs=annotator_needs(name))(build)


_register("depth", "per-frame depth (Depth Anything V2), min-max normalised per frame, 3 channels")
_register("pose", "DWPose body + face skeleton on black (VACE drawing convention, no hands)")
_register("face", "DWPose face keypoints only (pose restricted to the 68 face points) on black")
_register("flow", "optical flow as colour (RAFT, or annotator=farneback), first flow frame repeated")
_register("gray", "grayscale (BT.601 luma) copied to 3 channels, for colorization")
_register("scribble", "line drawing per frame (line-art model, or annotator=canny)")
