"""The safety checker: tiny classifier, sampling, verdicts, the missing-classifier path, deliver()."""

from __future__ import annotations

import numpy as np
import pytest

from vace.pipelines.fixtures import tiny_safety
from vace.pipelines.fixtures.tiny_model import resolve_safety_checker
from vace.pipelines.fixtures.tiny_safety import write_tiny_checker
from vace.pipelines.outputs import safety
from vace.pipelines.outputs.safety import SafetyConfig


def test_sample_indices():
    assert safety.sample_indices(0) == []
    assert safety.sample_indices(3) == [0, 1, 2]
    assert safety.sample_indices(81) == [0, 27, 53, 80]


def test_tiny_checker_scores_frames(tmp_path):
    path = write_tiny_checker(tmp_path / "sc")
    checker = safety.SafetyChecker(path)
    frames = np.random.default_rng(0).random((9, 40, 56, 3), dtype=np.float32)
    verdict = checker.check(frames)
    assert verdict.checked and verdict.frames == [0, 3, 5, 8] and len(verdict.scores) == 4
    assert all(0 <= s <= tiny_safety.TINY_NOISE_NSFW + 1e-6 for s in verdict.scores)  # calibrated: noise is safe
    assert verdict.nsfw is False
    assert max(checker.scores(tiny_safety.calibration_frames())) == pytest.approx(tiny_safety.TINY_NOISE_NSFW, abs=1e-5)
    checker.threshold = 0.0  # everything flagged
    assert checker.check(frames).nsfw is True
    checker.threshold = 1.01  # nothing flagged
    assert checker.check(frames).nsfw is False


def test_tiny_checker_bytes_are_deterministic(tmp_path):
    a, b = write_tiny_checker(tmp_path / "a"), write_tiny_checker(tmp_path / "b")
    for f in a.iterdir():
        assert f.read_bytes() == (b / f.name).read_bytes(), f.name


def test_missing_classifier_is_never_reported_as_checked(tmp_path):
    none = SafetyConfig()
    assert safety.availability(none)[0] is False and "no safety checker" in safety.availability(none)[1]
    verdict = safety.check_video_frames(np.zeros((5, 8, 8, 3), np.float32), none)
    assert verdict.checked is False and verdict.nsfw is None and "no safety checker" in verdict.note
    missing = SafetyConfig(checker=tmp_path / "nothing")
    assert safety.check_video_frames(np.zeros((5, 8, 8, 3), np.float32), missing).checked is False
    with pytest.raises(safety.SafetyUnavailable):
        safety.SafetyChecker(tmp_path / "nothing")
    with pytest.raises(ValueError):
        SafetyConfig(policy="bogus")
    assert SafetyConfig(policy="unchecked").policy == "unchecked"


def test_configured_tiny_checker(tiny_home):
    config = SafetyConfig(checker=resolve_safety_checker())
    assert safety.availability(config) == (True, "")
    verdict = safety.check_video_frames(np.full((5, 16, 16, 3), 0.5, np.float32), config)
    assert verdict.checked and verdict.nsfw is False


def test_deliver_encoder_zip_and_safety(tmp_path):
    from vace.pipelines.media.codec import probe_video, write_mp4
    from vace.pipelines.media.frames_zip import read_frames_zip
    from vace.pipelines.outputs.deliver import DeliverOptions, deliver

    config = SafetyConfig(checker=write_tiny_checker(tmp_path / "sc"))
    frames = (np.random.default_rng(1).random((5, 32, 48, 3)) * 255).astype(np.uint8)
    (tmp_path / "outputs").mkdir()
    video = write_mp4(frames, tmp_path / "outputs" / "v.mp4", 8)
    size_default = video.stat().st_size
    extra = deliver(frames, video, 8, DeliverOptions(quality=4.5, preset="veryfast", frames_zip=True,
                                                     safety_check=True), tmp_path / "outputs", "v", config)
    assert extra["encoder"] == {"crf": 28, "preset": "veryfast"}
    assert video.stat().st_size < size_default  # re-encoded at a lower quality
    assert probe_video(video)["num_frames"] == 5
    assert extra["frames_zip"]["path"] == "outputs/v-frames.zip"
    assert (read_frames_zip(tmp_path / "outputs" / "v-frames.zip") == frames).all()  # PNG is lossless
    assert extra["safety"]["checked"] is True and len(extra["safety"]["scores"]) == 4


def test_transparency_modes():
    from PIL import Image

    from vace.pipelines.media.transparency import flatten, frame_and_mask

    img = Image.new("RGBA", (8, 4), (255, 0, 0, 255))
    img.paste((0, 0, 0, 0), (0, 0, 4, 4))  # left half transparent
    rgb, mask = flatten(img, "content_aware")
    assert mask[:, :4].all() and not mask[:, 4:].any()
    assert np.allclose(rgb[:, :4], 0.5) and np.allclose(rgb[:, 4:], [1, 0, 0])
    rgb, mask = flatten(img, "white")
    assert not mask.any() and np.allclose(rgb[:, :4], 1.0)
    rgb, mask = flatten(img, "black")
    assert not mask.any() and np.allclose(rgb[:, :4], 0.0)
    frame, mask = frame_and_mask(img, "content_aware", 32, 16)
    assert frame.shape == (16, 32, 3) and mask.shape == (16, 32) and mask[:, :12].all() and not mask[:, 20:].any()
    opaque = Image.new("RGB", (8, 4), (0, 255, 0))
    assert not flatten(opaque, "content_aware")[1].any()
    with pytest.raises(ValueError):
        flatten(img, "gray")


@pytest.mark.parametrize("mode", ["content_aware", "white", "black"])
def test_first_frame_with_alpha_follows_transparency_mode(mode):
    from PIL import Image

    from vace.pipelines.conditioning import tasks
    from vace.pipelines.conditioning.primitives import TaskInputs

    img = Image.new("RGBA", (32, 32), (255, 0, 0, 255))
    img.paste((0, 0, 0, 0), (0, 0, 16, 32))  # left half transparent
    inputs = TaskInputs(width=32, height=32, num_frames=5, first_frame=img, options={"transparency_mode": mode})
    cond = tasks.build("firstframe", inputs)
    left, right = cond.mask[0, :, :12], cond.mask[0, :, 20:]
    assert not right.any() and cond.mask[1:].all()
    if mode == "content_aware":
        assert left.all() and np.allclose(cond.video[0, :, :12], 0.5)
    else:
        assert not left.any() and np.allclose(cond.video[0, :, :12], 1.0 if mode == "white" else 0.0)


def test_refusal_follows_policy_and_availability(tmp_path):
    from vace.pipelines.outputs import safety

    assert "refuses requests" in safety.refusal(SafetyConfig(policy="refuse"))
    assert safety.refusal(SafetyConfig(policy="unchecked")) is None
    assert safety.refusal(SafetyConfig(checker=write_tiny_checker(tmp_path / "checker"), policy="refuse")) is None
