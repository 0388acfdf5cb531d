"""Temporal plans: frame counts for downsampling + interpolation, the auto factor, and the kept input frames."""

from __future__ import annotations

import numpy as np
import pytest

from vace.pipelines.conditioning.primitives import TaskInputs
from vace.pipelines.conditioning.temporal import TemporalPlan, auto_factor, downsampled, plan_for, rendered_frames
from vace.pipelines.job.request import GenerationRequest
from vace.pipelines.media.codec import Video


@pytest.mark.parametrize("num_frames,factor,rendered", [(33, 1, 17), (161, 1, 81), (81, 0, 81), (81, 1, 41),
                                                        (81, 2, 29), (17, 5, 5), (241, 2, 81)])
def test_rendered_length_is_4n_plus_1_and_covers_the_request(num_frames, factor, rendered):
    assert rendered_frames(num_frames, factor) == rendered
    assert (rendered - 1) % 4 == 0 and (rendered - 1) * (factor + 1) + 1 >= num_frames


def test_interpolation_keeps_the_duration():
    plan = TemporalPlan(17, 0, 2)
    assert (plan.rendered, plan.between, plan.delivered, plan.delivered_fps(16)) == (17, 2, 49, 48)
    assert plan.delivered / plan.delivered_fps(16) == pytest.approx((17 - 1) / 16 + 1 / 48)


def test_downsampling_and_interpolation_in_one_pass():
    plan = TemporalPlan(33, 1, 2)
    assert (plan.rendered, plan.between, plan.delivered) == (17, 5, 97)
    assert (plan.rendered - 1) * (plan.between + 1) + 1 == plan.delivered


def test_auto_factor():
    assert auto_factor(30, 161, 15) == 1  # 30 / 2 = 15 fps, 81 frames rendered
    assert auto_factor(30, 81, 15) == 1
    assert auto_factor(60, 241, 15) == 3  # 15 fps, 61 frames
    assert auto_factor(16, 161, 15) == 0  # no factor keeps 15 fps
    assert auto_factor(30, 241, 15) == 0  # 15 fps would still render 121 frames


def test_downsampled_inputs_keep_every_other_frame_of_video_and_mask():
    frames = np.arange(33, dtype=np.float32)[:, None, None, None] * np.ones((1, 4, 4, 3), np.float32)
    inputs = TaskInputs(width=16, height=16, num_frames=33, video=Video(frames, 30.0),
                        mask_video=frames[..., 0].copy(), options={"match_input_num_frames": True})
    plan = plan_for(inputs, GenerationRequest("x", num_frames=33, temporal_downsample=1))
    assert (plan.num_frames, plan.rendered, plan.read_frames) == (33, 17, 33)
    small = downsampled(inputs, plan)
    assert small.num_frames == 17 and "match_input_num_frames" not in small.options
    assert small.video.frames[:, 0, 0, 0].tolist() == list(range(0, 33, 2))
    assert small.mask_video[:, 0, 0].tolist() == list(range(0, 33, 2))
    assert small.video.fps == 30.0


def test_auto_plan_follows_the_input_fps():
    video = Video(np.zeros((161, 4, 4, 3), np.float32), 30.0)
    inputs = TaskInputs(width=16, height=16, num_frames=161, video=video)
    plan = plan_for(inputs, GenerationRequest("x", num_frames=161, auto_downsample=True))
    assert (plan.factor, plan.rendered, plan.delivered) == (1, 81, 161)
