"""Temporal plans: render fewer frames than delivered, and deliver more frames than rendered.

Temporal downsampling with factor d keeps every (d + 1)-th frame of the input, control and mask videos,
renders that shorter clip (a 4n+1 length, as the VAE needs) and has d frames interpolated back between each
rendered pair, so the output has the requested length at the input's fps. Frame interpolation with k adds k
more frames between each pair of those: N frames become (N - 1) * (k + 1) + 1 played at (k + 1) times the
fps, the same duration. Both are made in one interpolation pass of (d + 1) * (k + 1) - 1 frames per pair.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from vace.pipelines.conditioning.primitives import TaskInputs
from vace.pipelines.conditioning.tasks import input_frame_count
from vace.pipelines.job.request import MAX_DOWNSAMPLE_FACTOR, MIN_FRAMES, GenerationRequest, snap_frames

AUTO_MAX_RENDER_FRAMES = 81  # the length the auto factor makes a clip fit: Wan's trained 81 frames


def rendered_frames(num_frames: int, factor: int) -> int:
    """The 4n+1 length to render so that d = factor frames restored between each pair cover num_frames."""
    if factor == 0:
        return num_frames
    pairs = math.ceil((num_frames - 1) / (factor + 1))
    return max(4 * math.ceil(pairs / 4) + 1, MIN_FRAMES)


def auto_factor(fps: float, num_frames: int, min_fps: float, max_render_frames: int = AUTO_MAX_RENDER_FRAMES) -> int:
    """The largest d (0..5) for which fps / (d + 1) stays >= min_fps and the rendered length fits
    max_render_frames; 0 when none does."""
    fitting = [d for d in range(MAX_DOWNSAMPLE_FACTOR + 1)
               if fps / (d + 1) >= min_fps and rendered_frames(num_frames, d) <= max_render_frames]
    return max(fitting, default=0)


@dataclass(frozen=True)
class TemporalPlan:
    """How many frames are rendered, made between each rendered pair, and delivered."""

    num_frames: int  # the requested length at the request's fps
    factor: int = 0  # d: input frames skipped between two kept ones
    interpolate: int = 0  # k: frames added between each delivered pair (num_interpolated_frames)

    @property
    def rendered(self) -> int:
        return rendered_frames(self.num_frames, self.factor)

    @property
    def between(self) -> int:
        """Frames made between two rendered frames."""
        return (self.factor + 1) * (self.interpolate + 1) - 1

    @property
    def delivered(self) -> int:
        return (self.num_frames - 1) * (self.interpolate + 1) + 1

    def delivered_fps(self, fps: float) -> float:
        return fps * (self.interpolate + 1)

    @property
    def read_frames(self) -> int:
        """Input frames to decode: the last kept one is frame (rendered - 1) * (d + 1)."""
        return (self.rendered - 1) * (self.factor + 1) + 1


def read_ahead(request: GenerationRequest) -> int:
    """Input frames a downsampled render may keep beyond the requested length (the rendered 4n+1 clip covers up to
    4 (d + 1) more); 0 without downsampling."""
    downsampling = request.temporal_downsample or request.auto_downsample
    return 4 * (MAX_DOWNSAMPLE_FACTOR + 1) if downsampling else 0


def plan_for(inputs: TaskInputs, request: GenerationRequest) -> TemporalPlan:
    """The plan for decoded inputs: the auto factor follows the input video's fps (else the request's)."""
    num_frames = inputs.num_frames
    if inputs.options.get("match_input_num_frames") and inputs.video is not None:
        num_frames = input_frame_count(len(inputs.video.frames))
    factor = request.temporal_downsample
    if request.auto_downsample:
        fps = inputs.video.fps if inputs.video is not None else request.fps
        factor = auto_factor(fps, num_frames, request.auto_downsample_min_fps)
    return TemporalPlan(snap_frames(num_frames), factor, request.interpolated_frames)


def downsampled(inputs: TaskInputs, plan: TemporalPlan) -> TaskInputs:
    """The inputs with every (d + 1)-th frame of the video and mask video kept and the rendered length set."""
    if plan.factor == 0:
        return inputs
    step = plan.factor + 1
    options = {k: v for k, v in inputs.options.items() if k != "match_input_num_frames"}  # the plan fixed it
    video = inputs.video
    if video is not None:
        video = dataclasses.replace(video, frames=np.ascontiguousarray(video.frames[::step][:plan.rendered]))
    mask = inputs.mask_video
    if mask is not None:
        mask = np.ascontiguousarray(mask[::step][:plan.rendered])
    return dataclasses.replace(inputs, video=video, mask_video=mask, num_frames=plan.rendered, options=options)
