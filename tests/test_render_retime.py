"""The render path with frame interpolation, temporal downsampling and prompt expansion (tiny model and tiny
helper weights beside it, CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.synthetic import moving_square_frames, write_video
from vace.pipelines.engine.render import Renderer
from vace.pipelines.job.request import GenerationRequest, RequestError
from vace.pipelines.media.codec import load_video, probe_video
from vace.pipelines.outputs.retime import retime
from vace.weights.catalog import HelperDirs


class PromptSpy(Renderer):
    """Records the prompt the pipeline is given embeddings for."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.encoded: list[str] = []

    def encode_prompt(self, prompt, negative_prompt, guidance):
        self.encoded.append(prompt)
        return super().encode_prompt(prompt, negative_prompt, guidance)


@pytest.fixture()
def spy(tiny_model, tmp_path: Path) -> PromptSpy:
    return PromptSpy(tiny_model, work_dir=tmp_path / "work")


def small(**kw) -> GenerationRequest:
    return GenerationRequest(**{**dict(prompt="a red fox", width=64, height=48, num_frames=17, fps=8, steps=2,
                                       seed=5), **kw})


def render(renderer: Renderer, request: GenerationRequest, out: Path, logs: list[str] | None = None):
    prepared = renderer.prepare(request)
    result = renderer.render(prepared, output_path=out)
    return prepared, retime(result, prepared, on_log=(logs.append if logs is not None else None))


@pytest.mark.parametrize("interpolator", ["film", "rife"])
def test_interpolation_triples_frames_and_fps(spy: PromptSpy, tmp_path: Path, interpolator: str):
    logs: list[str] = []
    request = small(num_frames=9, interpolated_frames=2, interpolator=interpolator)
    _, result = render(spy, request, tmp_path / "out.mp4", logs)
    assert (result.num_frames, result.fps) == (25, 24)
    assert probe_video(result.path) == {"num_frames": 25, "width": 64, "height": 48, "fps": 24.0}
    assert result.metrics["interpolator"] == interpolator and result.metrics["rendered_frames"] == 9
    assert logs[0] == "interpolating 1/8" and logs[-1] == "interpolating 8/8"
    frames = load_video(result.path, "out").frames.astype(np.float32) / 255
    for i in range(1, 24):
        if i % 3:  # every made frame differs from both neighbours in the written file
            assert np.abs(frames[i] - frames[i - 1]).mean() > 0.5 / 255
            assert np.abs(frames[i] - frames[i + 1]).mean() > 0.5 / 255


def test_downsampling_renders_half_and_returns_the_input_length(spy: PromptSpy, tmp_path: Path):
    control = write_video(tmp_path / "control.mp4", moving_square_frames(33, 32, 32), fps=16)
    prepared, result = render(spy, small(num_frames=33, fps=16, width=32, height=32, video=str(control),
                                         task="control", temporal_downsample=1), tmp_path / "out.mp4")
    assert prepared.conditioning.num_frames == 17 and prepared.plan.between == 1
    # the control frames kept are the input's frames 0, 2, 4, ...
    source = load_video(control, "control").frames.astype(np.float32) / 255
    np.testing.assert_allclose(prepared.conditioning.video[3], source[6], atol=1e-6)
    assert (result.num_frames, result.fps) == (33, 16)
    assert result.metrics["temporal_downsample_factor"] == 1 and result.metrics["rendered_frames"] == 17


def test_auto_downsampling_follows_the_input_fps(spy: PromptSpy, tmp_path: Path):
    control = write_video(tmp_path / "control.mp4", moving_square_frames(41, 32, 16), fps=30)
    prepared, result = render(spy, small(num_frames=41, width=32, height=16, video=str(control), task="control",
                                         auto_downsample=True, auto_downsample_min_fps=10), tmp_path / "o.mp4")
    assert prepared.plan.factor == 2 and prepared.conditioning.num_frames == 17  # 30 / 3 = 10 fps
    assert result.num_frames == 41 and result.metrics["temporal_downsample_factor"] == 2


def test_expanded_prompt_is_what_the_pipeline_encodes(spy: PromptSpy, tmp_path: Path):
    prepared, result = render(spy, small(expand_prompt=True, num_frames=5), tmp_path / "out.mp4")
    expanded = prepared.request.prompt
    assert expanded and expanded != "a red fox"
    assert spy.encoded == [expanded]
    assert result.metrics["expanded_prompt"] == expanded and result.metrics["original_prompt"] == "a red fox"
    again, _ = render(spy, small(expand_prompt=True, num_frames=5), tmp_path / "again.mp4")
    assert again.request.prompt == expanded  # the same seed, the same rewrite


def test_missing_helper_weights_are_refused_before_any_work(tiny_model, tmp_path: Path):
    helpers = HelperDirs(interpolators=tmp_path / "none", prompt_extender=tmp_path / "llm",
                         prompt_extender_vl=tmp_path / "vl")
    renderer = Renderer(tiny_model, work_dir=tmp_path / "w", helpers=helpers)
    with pytest.raises(RequestError) as err:
        renderer.prepare(small(interpolated_frames=1, interpolator="rife"))
    assert err.value.field == "interpolator" and str(tmp_path / "none" / "rife") in err.value.message
    assert "--interpolators" in err.value.message and "Practical-RIFE" in err.value.message
    with pytest.raises(RequestError) as err:
        renderer.prepare(small(expand_prompt=True))
    assert err.value.field == "expand_prompt" and str(tmp_path / "llm") in err.value.message
    assert "huggingface-cli download Qwen/Qwen2.5-7B-Instruct" in err.value.message
