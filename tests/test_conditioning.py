"""What render() hands to WanVACEPipeline for each conditioning mode, checked against the VACE convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.synthetic import data_uri, mask_frames_box, moving_square_frames, save_image, solid_image, write_video
from vace.pipelines.job.request import GenerationRequest
from vace.pipelines.media.codec import from_uint8, load_video

W, H, N = 64, 48, 9


def req(**kw) -> GenerationRequest:
    base = dict(prompt="a test scene", width=W, height=H, num_frames=N, steps=2, seed=1)
    base.update(kw)
    return GenerationRequest(**base)


@pytest.fixture()
def spy(renderer, monkeypatch):
    """Record the kwargs of every WanVACEPipeline call while still running the real pipeline."""
    calls: list[dict] = []
    cls = type(renderer.pipe)
    original = cls.__call__

    def recording(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", recording)
    return calls


def handed(renderer, spy, request: GenerationRequest) -> dict:
    renderer.render(request)
    assert len(spy) == 1
    kw = spy[0]
    assert kw["height"] == H and kw["width"] == W and kw["num_frames"] == N
    return kw


def as_arrays(kw: dict) -> tuple[np.ndarray, np.ndarray]:
    video, mask = kw["video"][0], kw["mask"][0]
    assert video.shape == (N, H, W, 3) and mask.shape == (N, H, W, 3)
    return video, mask[..., 0]


def test_text_to_video_is_all_gray_all_ones(renderer, spy):
    video, mask = as_arrays(handed(renderer, spy, req()))
    assert np.all(video == 0.5) and np.all(mask == 1.0)
    assert spy[0]["reference_images"] is None
    # The pipeline's own preprocessing maps the gray fill to exactly 0 (neutral) in [-1, 1].
    v, m, _ = renderer.pipe.preprocess_conditions(spy[0]["video"], spy[0]["mask"], None, 1, H, W, N,
                                                  torch.float32, "cpu")
    assert v.shape == (1, 3, N, H, W) and float(v.abs().max()) == 0.0 and float(m.min()) == 1.0


def test_reference_images_fitted_on_white(renderer, spy, tmp_path):
    tall = save_image(solid_image(16, 48, (200, 10, 10)), tmp_path / "tall.png")
    wide = data_uri(solid_image(64, 16, (10, 200, 10)))
    kw = handed(renderer, spy, req(reference_images=[str(tall), wide]))
    video, mask = as_arrays(kw)
    assert np.all(video == 0.5) and np.all(mask == 1.0)
    refs = [np.asarray(r) for r in kw["reference_images"]]
    assert [r.shape for r in refs] == [(H, W, 3), (H, W, 3)]
    tall_ref, wide_ref = refs
    # 16x48 scaled by min(64/16, 48/48)=1 -> 16x48 centred: columns 24..40 red, the rest white.
    assert np.all(tall_ref[:, 24:40] == (200, 10, 10)) and np.all(tall_ref[:, :24] == 255)
    assert np.all(tall_ref[:, 40:] == 255)
    # 64x16 scaled by 1 -> rows 16..32 green, white above and below.
    assert np.all(wide_ref[16:32] == (10, 200, 10)) and np.all(wide_ref[:16] == 255) and np.all(wide_ref[32:] == 255)


def test_inpainting_fills_masked_region_gray(renderer, spy, tmp_path):
    src = write_video(tmp_path / "src.mp4", moving_square_frames(N, W, H))
    box = (8, 8, 40, 32)
    mask_path = write_video(tmp_path / "mask.mp4", mask_frames_box(N, W, H, box))
    video, mask = as_arrays(handed(renderer, spy, req(video=str(src), mask=str(mask_path))))
    x0, y0, x1, y1 = box
    expected_mask = np.zeros((N, H, W), np.float32)
    expected_mask[:, y0:y1, x0:x1] = 1
    assert np.array_equal(mask, expected_mask)
    assert np.all(video[:, y0:y1, x0:x1] == 0.5)
    original = from_uint8(load_video(src, "video").frames)
    keep = expected_mask == 0
    assert np.array_equal(video[keep], original[keep])


def test_mask_image_applies_to_every_frame(renderer, spy, tmp_path):
    src = write_video(tmp_path / "src.mp4", moving_square_frames(N, W, H))
    m = np.zeros((H, W), np.uint8)
    m[:, W // 2:] = 255
    from PIL import Image

    mask_png = save_image(Image.fromarray(m), tmp_path / "mask.png")
    video, mask = as_arrays(handed(renderer, spy, req(video=str(src), mask=str(mask_png))))
    assert np.all(mask[:, :, W // 2:] == 1) and np.all(mask[:, :, :W // 2] == 0)
    assert np.all(video[:, :, W // 2:] == 0.5)


def test_video_and_mask_of_other_size_are_resized_to_exactly_output(renderer, spy, tmp_path):
    src = write_video(tmp_path / "big.mp4", moving_square_frames(N, 128, 96, size=32))
    mask_path = write_video(tmp_path / "bigmask.mp4", mask_frames_box(N, 128, 96, (0, 0, 64, 96)))
    video, mask = as_arrays(handed(renderer, spy, req(video=str(src), mask=str(mask_path))))
    # Same aspect (4:3) -> plain 2x downscale: left half masked.
    assert np.all(mask[:, :, : W // 2 - 1] == 1) and np.all(mask[:, :, W // 2 + 1:] == 0)


def test_control_video_alone_keeps_frames_and_mask_all_ones(renderer, spy, tmp_path):
    src = write_video(tmp_path / "ctrl.mp4", moving_square_frames(N + 4, W, H))
    video, mask = as_arrays(handed(renderer, spy, req(video=str(src))))
    assert np.all(mask == 1.0)
    assert np.array_equal(video, from_uint8(load_video(src, "video").frames[:N]))


@pytest.mark.parametrize("mode", ["first", "last", "both"])
def test_first_last_frame_slots(renderer, spy, tmp_path, mode):
    first = save_image(solid_image(W, H, (250, 0, 0)), tmp_path / "first.png")
    last = save_image(solid_image(W * 2, H * 2, (0, 0, 250)), tmp_path / "last.png")
    kwargs = {"first": dict(first_frame=str(first)), "last": dict(last_frame=str(last)),
              "both": dict(first_frame=str(first), last_frame=str(last))}[mode]
    video, mask = as_arrays(handed(renderer, spy, req(**kwargs)))
    red, blue = np.array([250, 0, 0]) / 255, np.array([0, 0, 250]) / 255
    inner = slice(1 if mode in ("first", "both") else 0, N - 1 if mode in ("last", "both") else N)
    assert np.all(video[inner] == 0.5) and np.all(mask[inner] == 1.0)
    if mode in ("first", "both"):
        assert np.allclose(video[0], red, atol=1e-6) and np.all(mask[0] == 0)
    if mode in ("last", "both"):
        assert np.allclose(video[-1], blue, atol=1e-6) and np.all(mask[-1] == 0)


def test_match_input_never_decodes_more_than_the_longest_output(tmp_path):
    """A clip longer than MAX_FRAMES is cut at decode time even when the frame count comes from the input."""
    from vace.pipelines.conditioning.inputs import load_inputs
    from vace.pipelines.job.request import MAX_FRAMES

    src = write_video(tmp_path / "long.mp4", moving_square_frames(MAX_FRAMES + 8, 32, 16, size=4, step=1))
    request = req(video=str(src), task_options={"match_input_num_frames": True}).validated()
    assert len(load_inputs(request, tmp_path / "work").video.frames) == MAX_FRAMES
    plain = req(video=str(src)).validated()
    assert len(load_inputs(plain, tmp_path / "work2").video.frames) == N
