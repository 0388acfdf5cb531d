"""Input videos are decoded as uint8, scaled down in the decoder to cover the job's size, never at source size."""

from __future__ import annotations

import numpy as np
import pytest

from tests.synthetic import mask_frames_box, moving_square_frames, write_video
from vace.pipelines.job.request import GenerationRequest
from vace.pipelines.media.codec import from_uint8, load_video, resize_frames


def test_decoder_scales_down_to_cover_the_output_size_keeping_aspect(tmp_path):
    src = write_video(tmp_path / "wide.mp4", moving_square_frames(6, 256, 144, size=32))
    video = load_video(src, "video", fit=(64, 48))
    # 16:9 covering 64x48 -> 48 rows, 85 columns (the cover-resize then crops 64 of them).
    assert video.frames.shape == (6, 48, 85, 3) and video.frames.dtype == np.uint8
    whole = load_video(src, "video")
    assert whole.frames.shape == (6, 144, 256, 3)
    # Same picture: the decoder's scale agrees with resizing the full-size frames ourselves.
    ours = resize_frames(whole.frames, 64, 48)
    theirs = resize_frames(video.frames, 64, 48)
    assert theirs.shape == ours.shape == (6, 48, 64, 3)
    assert np.abs(theirs - ours).mean() < 0.02


def test_a_source_smaller_than_the_output_is_never_scaled_up(tmp_path):
    src = write_video(tmp_path / "small.mp4", moving_square_frames(3, 32, 24, size=8))
    assert load_video(src, "video", fit=(64, 48)).frames.shape == (3, 24, 32, 3)
    tall = write_video(tmp_path / "tall.mp4", moving_square_frames(3, 48, 96, size=8))
    assert load_video(tall, "video", fit=(64, 48)).frames.shape == (3, 96, 48, 3)  # width already below 64


def test_gray_decode_is_the_channel_mean(tmp_path):
    frames = mask_frames_box(4, 64, 48, (8, 8, 40, 32))
    src = write_video(tmp_path / "mask.mp4", frames)
    rgb = load_video(src, "mask").frames
    gray = load_video(src, "mask", gray=True).frames
    assert gray.shape == (4, 48, 64) and gray.dtype == np.uint8
    assert np.abs(gray.astype(np.int32) - np.round(rgb.mean(axis=-1)).astype(np.int32)).max() <= 1
    assert np.all(gray[:, 12:28, 12:36] > 200) and np.all(gray[:, 40:, 48:] < 50)


def test_max_frames_and_growth_past_the_container_estimate(tmp_path):
    src = write_video(tmp_path / "clip.mp4", moving_square_frames(70, 32, 16, size=4, step=1))
    assert len(load_video(src, "video", max_frames=9).frames) == 9
    assert len(load_video(src, "video").frames) == 70
    from vace.pipelines.media.codec import _FrameBuffer

    buffer = _FrameBuffer((2, 2), max_frames=None, duration=None, fps=None)
    for k in range(70):  # more than the 64 frames allocated when the container says nothing
        buffer.append(np.full((2, 2), k, np.uint8))
    assert buffer.array().shape == (70, 2, 2) and list(buffer.array()[:, 0, 0]) == list(range(70))


@pytest.mark.parametrize("mode", ["cover", "stretch"])
def test_resize_takes_uint8_and_float_alike(mode):
    frames = moving_square_frames(11, 40, 30, size=8)  # more frames than one resize chunk
    a = resize_frames(frames, 24, 20, mode=mode)
    b = resize_frames(from_uint8(frames), 24, 20, mode=mode)
    assert a.dtype == b.dtype == np.float32 and a.shape == (11, 20, 24, 3)
    assert np.array_equal(a, b)
    same = resize_frames(frames, 40, 30)
    assert same.dtype == np.float32 and np.array_equal(same, from_uint8(frames))


def test_inputs_for_a_job_are_held_at_covering_size_as_uint8(tmp_path):
    from vace.pipelines.conditioning import tasks
    from vace.pipelines.conditioning.inputs import load_inputs

    src = write_video(tmp_path / "src.mp4", moving_square_frames(12, 256, 144, size=32))
    mask = write_video(tmp_path / "mask.mp4", mask_frames_box(12, 256, 144, (0, 0, 128, 144)))
    request = GenerationRequest(prompt="p", width=64, height=48, num_frames=9, steps=1, seed=0, video=str(src),
                                mask=str(mask), task="inpainting").validated()
    inputs = load_inputs(request, tmp_path / "work")
    assert inputs.video.frames.shape == (9, 48, 85, 3) and inputs.video.frames.dtype == np.uint8
    assert inputs.mask_video.shape == (9, 48, 85) and inputs.mask_video.dtype == np.uint8
    cond = tasks.build("inpainting", inputs)
    assert cond.video.shape == (9, 48, 64, 3) and cond.video.dtype == np.float32
    # The left half of the source is masked; the cover crop drops 10 columns on each side of 85.
    assert np.all(cond.mask[:, :, :30] == 1) and np.all(cond.mask[:, :, 34:] == 0)
    assert np.all(cond.video[:, :, :30] == 0.5)
