"""render(): seeds, output shape on disk, progress and cancellation (tiny model, CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.synthetic import moving_square_frames, write_video
from vace.pipelines.engine.render import RenderCancelled
from vace.pipelines.job.request import GenerationRequest
from vace.pipelines.media.codec import from_uint8, load_video, probe_video


def small(**kw) -> GenerationRequest:
    base = dict(prompt="a red fox in the snow", width=64, height=48, num_frames=9, steps=3, seed=7)
    base.update(kw)
    return GenerationRequest(**base)


def test_same_seed_same_frames_other_seed_differs(renderer):
    a = renderer.render(small())
    b = renderer.render(small())
    c = renderer.render(small(seed=8))
    assert a.frames.shape == (9, 48, 64, 3)
    assert np.array_equal(a.frames, b.frames)
    assert np.abs(a.frames - c.frames).max() > 1e-3


def test_random_seed_is_reported_and_reproduces(renderer):
    first = renderer.render(small(seed=-1))
    assert 0 <= first.seed < 2**32
    again = renderer.render(small(seed=first.seed))
    assert np.array_equal(first.frames, again.frames)


@pytest.mark.parametrize("frames,expected", [(17, 17), (16, 17), (14, 13)])
def test_mp4_has_requested_shape_and_4n1_frames(renderer, tmp_path, frames, expected):
    out = tmp_path / "clip.mp4"
    result = renderer.render(small(num_frames=frames, fps=12, width=80, height=32), output_path=out)
    assert result.num_frames == expected and result.path == out
    probe = probe_video(out)
    assert probe == {"num_frames": expected, "width": 80, "height": 32, "fps": 12.0}
    decoded = from_uint8(load_video(out, "video").frames)
    # H.264 is lossy, but the written video must be the rendered one.
    assert np.abs(decoded - result.frames).mean() < 0.05


def test_timings_cover_every_stage(renderer):
    result = renderer.render(small())
    assert set(result.timings) == {"load_inputs", "encode_prompt", "denoise", "decode", "write"}
    assert all(v >= 0 for v in result.timings.values())


def test_progress_each_step_and_cancel_within_one_step(renderer):
    seen: list[tuple[int, int]] = []
    renderer.render(small(steps=4), on_progress=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]

    steps_done: list[int] = []
    with pytest.raises(RenderCancelled):
        renderer.render(small(steps=6), on_progress=lambda i, n: steps_done.append(i),
                        should_cancel=lambda: len(steps_done) >= 2)
    assert steps_done == [1, 2]


def test_all_zero_conditioning_is_encoded_once_per_shape(renderer, tmp_path):
    """Text-to-video conditions on two all-zero halves: the VAE encoder runs for one of them (a 9-frame clip is 3
    chunks), a later job of that shape runs it for none, and a control video (which keeps nothing: its kept half
    is zeros) for its own half only. The remembered latents are those of a plain encode."""
    import torch  # torch loads only where tensors are used
    from diffusers import AutoencoderKLWan  # diffusers loads only where a model is built

    vae = renderer.pipe.vae
    vae.zero_encodes().clear()
    chunks: list[int] = []
    hook = vae.encoder.register_forward_pre_hook(lambda _module, args: chunks.append(args[0].shape[2]))
    try:
        first = renderer.render(small())
        assert chunks == [1, 4, 4]
        again = renderer.render(small())
        assert len(chunks) == 3 and np.array_equal(first.frames, again.frames)
        video = write_video(tmp_path / "src.mp4", moving_square_frames(9, 64, 48))
        renderer.render(small(video=str(video)))
        assert len(chunks) == 6
    finally:
        hook.remove()
    with torch.inference_mode():
        zeros = torch.zeros(1, 3, 9, 48, 64)
        plain = AutoencoderKLWan.encode(vae, zeros).latent_dist.parameters
        assert torch.equal(vae.encode(zeros).latent_dist.parameters, plain)
        # tiles that cut the clip differently are another encode: each tiling is remembered apart
        try:
            seen = [plain]
            for tile, stride in ((32, 16), (32, 24), (40, 16)):
                vae.enable_tiling(tile, tile, stride, stride)
                tiled = AutoencoderKLWan.encode(vae, zeros).latent_dist.parameters
                assert not any(torch.equal(tiled, other) for other in seen)  # so a cache ignoring tiling would fail
                seen.append(tiled)
                assert torch.equal(vae.encode(zeros).latent_dist.parameters, tiled)
        finally:
            vae.disable_tiling()
        assert torch.equal(vae.encode(zeros).latent_dist.parameters, plain)


@pytest.mark.parametrize("sampler", ["unipc", "dpm++", "euler"])
def test_each_sampler_renders(renderer, sampler):
    result = renderer.render(small(sampler=sampler, shift=5.0))
    assert result.frames.shape == (9, 48, 64, 3) and np.isfinite(result.frames).all()


@pytest.mark.parametrize("sampler", ["unipc", "dpm++"])
def test_a_high_shift_with_many_steps_runs_every_step(renderer, sampler):
    """Shift 30 at 50 steps repeats the schedule's first (integer) timesteps; the loop still starts at the first
    one, and ends at the last (it used to start one late and fail at the end)."""
    from vace.pipelines.engine.schedulers import make_scheduler

    schedule = make_scheduler(sampler, 30.0)
    schedule.set_timesteps(50)
    assert len(set(schedule.timesteps.tolist())) < 50  # the case: repeated timesteps
    steps: list[tuple[int, int]] = []
    result = renderer.render(small(sampler=sampler, shift=30.0, steps=50, width=16, height=16, num_frames=5),
                             on_progress=lambda i, n: steps.append((i, n)))
    assert result.frames.shape == (5, 16, 16, 3) and np.isfinite(result.frames).all()
    assert [i for i, n in steps if n == 50][-1] == 50


def test_samplers_are_distinct_schedules(renderer):
    frames = {s: renderer.render(small(sampler=s)).frames for s in ("unipc", "euler")}
    assert np.abs(frames["unipc"] - frames["euler"]).max() > 1e-4


def test_two_expert_model_switches_experts(tiny_a14b_dir, tmp_path):
    from vace.pipelines.engine.loading import load_pipeline
    from vace.pipelines.engine.render import Renderer

    model = load_pipeline(tiny_a14b_dir, device="cpu")
    assert model.two_experts and model.pipeline.config.boundary_ratio == 0.875
    calls = {"transformer": 0, "transformer_2": 0}
    for name in calls:
        module = getattr(model.pipeline, name)
        module.register_forward_pre_hook(lambda *_a, n=name: calls.__setitem__(n, calls[n] + 1))
    result = Renderer(model, work_dir=tmp_path).render(small(steps=4, shift=1.0))
    assert result.frames.shape == (9, 48, 64, 3)
    # Both experts ran (high-noise steps on `transformer`, low-noise on `transformer_2`), two forwards (CFG) a step.
    assert calls["transformer"] > 0 and calls["transformer_2"] > 0
    assert calls["transformer"] + calls["transformer_2"] == 8
